# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

import datetime
from unittest import mock

import fixtures
from oslo_utils import timeutils

from nova.compute import instance_actions
from nova.compute import task_states
from nova import exception as nova_exception

from nova_multidest.conductor import manager as manager_mod
from nova_multidest.conductor import records
from nova_multidest.conductor import unstarted
from nova_multidest import exceptions
from nova_multidest import vocabulary
from tests import base


class UnstartedTestBase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.flags(accept_timeout=100)
        self.instance = mock.Mock(uuid='inst', system_metadata={},
                                  task_state=task_states.MIGRATING)
        self.fault = self.patch(
            'nova.compute.utils.add_instance_fault_from_exc')
        self.event_start = self.patch(
            'nova.objects.InstanceActionEvent.event_start')
        self.event_failed = self.patch(
            'nova.objects.InstanceActionEvent.event_finish_with_failure')
        self.action_finish = self.patch(
            'nova.objects.InstanceAction.action_finish')

    def patch(self, target, **kwargs):
        return self.useFixture(fixtures.MockPatch(target, **kwargs)).mock


class AbandonTest(UnstartedTestBase):

    def test_clears_task_state_and_ends_the_action_with_the_reason(self):
        error = exceptions.RequestNotStarted(seconds=100)
        self.assertTrue(unstarted.abandon(mock.Mock(), self.instance, error))
        self.assertIsNone(self.instance.task_state)
        self.instance.save.assert_called_once_with(
            expected_task_state=[task_states.MIGRATING])
        self.assertIs(error, self.fault.call_args.args[2])
        self.assertEqual(vocabulary.EVENT_LIVE_MIGRATION,
                         self.event_failed.call_args.args[2])
        self.assertIn('within 100 seconds',
                      self.event_failed.call_args.kwargs['exc_tb'])
        self.action_finish.assert_called_once()

    def test_a_started_group_or_another_task_is_left_alone(self):
        records.start_group(self.instance, 1, 'conductor-1')
        self.instance.save.reset_mock()
        self.assertFalse(unstarted.abandon(mock.Mock(), self.instance,
                                           RuntimeError('x')))
        self.instance.save.assert_not_called()
        self.instance.system_metadata = {}
        self.instance.save.side_effect = (
            nova_exception.UnexpectedTaskStateError(
                instance_uuid='inst', expected='migrating', actual=None))
        self.assertFalse(unstarted.abandon(mock.Mock(), self.instance,
                                           RuntimeError('x')))
        self.fault.assert_not_called()


class NeverStartedTest(UnstartedTestBase):

    def setUp(self):
        super().setUp()
        self.action = mock.Mock(
            id=7, action=instance_actions.LIVE_MIGRATION, finish_time=None,
            # As the database answers: an aware datetime.
            start_time=timeutils.utcnow(with_timezone=True) -
            datetime.timedelta(seconds=101))
        self.patch('nova.objects.InstanceActionList.get_by_instance_uuid',
                   side_effect=lambda *a, **k: [self.action])
        self.events = self.patch(
            'nova.objects.InstanceActionEventList.get_by_action',
            return_value=[])
        self.migrations = self.patch(
            'nova.objects.MigrationList.get_by_filters', return_value=[])

    def never_started(self):
        return unstarted._never_started(mock.Mock(), self.instance)

    def test_an_old_request_with_nothing_started_is_rolled_back(self):
        self.assertIs(self.action, self.never_started())

    def test_a_young_request_waits(self):
        self.action.start_time = timeutils.utcnow()
        self.assertIsNone(self.never_started())

    def test_a_request_a_conductor_took_is_not_touched(self):
        self.events.return_value = [mock.Mock()]
        self.assertIsNone(self.never_started())
        self.events.return_value = []
        self.migrations.return_value = [mock.Mock()]
        self.assertIsNone(self.never_started())

    def test_another_operation_is_not_touched(self):
        self.action.action = 'resize'
        self.assertIsNone(self.never_started())


class RunGroupTest(UnstartedTestBase):
    """The conductor rolls back what fails before the first record."""

    def setUp(self):
        super().setUp()
        self.manager = manager_mod.MultiDestConductorManager.__new__(
            manager_mod.MultiDestConductorManager)
        self.manager.clients = mock.Mock()
        self.manager._running = set()
        self.manager.host = 'conductor-1'
        self.instance.flavor.extra_specs = {}
        self.manager.stopping = lambda: False
        self.patch('nova.objects.InstanceMapping.get_by_instance_uuid')
        self.patch('nova.context.set_target_cell')
        self.patch('nova.objects.Instance.get_by_uuid',
                   return_value=self.instance)
        self.patch('nova.compute.utils.EventReporter')
        self.age = self.patch(
            'nova_multidest.conductor.unstarted.request_age',
            return_value=1.0)

    def run_group(self):
        self.manager._run_group(mock.MagicMock(), self.instance, None, 2,
                                'auto', False)

    def test_failure_before_the_first_record_rolls_back(self):
        self.patch('nova_multidest.conductor.records.start_group',
                   side_effect=RuntimeError('database gone'))
        self.run_group()
        self.assertIsNone(self.instance.task_state)
        self.assertIn('database gone', str(self.fault.call_args.args[2]))
        self.action_finish.assert_called_once()

    def test_a_late_request_is_refused_and_rolled_back(self):
        self.age.return_value = 51.0
        task = self.patch('nova_multidest.conductor.tasks.'
                          'live_migrate_multi.LiveMigrateMultiTask')
        self.run_group()
        task.assert_not_called()
        self.assertIsNone(self.instance.task_state)
        self.assertIsInstance(self.fault.call_args.args[2],
                              exceptions.RequestNotStarted)
