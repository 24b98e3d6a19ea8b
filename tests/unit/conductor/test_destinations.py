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

from unittest import mock

import fixtures
import oslo_messaging

from nova import exception as nova_exception
from nova import objects

from nova_multidest.conductor import destinations
from nova_multidest import exceptions
from tests import base

objects.register_all()
CELL = '3f0b9c2e-5d1a-4e8f-a7c6-0b2d4e6f8a10'


def selection(host):
    return mock.Mock(service_host=host, nodename=host,
                     allocation_request='{"allocations": {}}',
                     allocation_request_version='1.36')


class ScheduleTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.query = mock.Mock()
        self.report = mock.Mock()
        self.report.claim_resources.return_value = True
        self.instance = mock.Mock(host='src')
        self.recorded = []
        self.pending = []

    def schedule(self, count, exclude=()):
        return destinations.schedule(
            mock.Mock(), self.query, self.report, mock.Mock(),
            self.instance, count, set(exclude),
            lambda host, node, uuid: self.recorded.append((host, uuid)),
            pending_claim=self.pending.append)

    def test_no_consumer_is_recorded_without_its_host(self):
        self.query.select_destinations.return_value = [
            [selection('a'), selection('b')]]
        picked = self.schedule(2)
        self.assertNotIn(None, [host for host, _ in self.recorded])
        # The scheduler's own consumer was pending during the call only.
        self.assertEqual([picked[0].migration_uuid, None], self.pending)

    def test_scheduler_call_that_fails_otherwise_drops_its_claim(self):
        self.answer(oslo_messaging.MessagingTimeout('no reply'))
        error = self.assertRaises(exceptions.SchedulingFailed,
                                  self.schedule, 2)
        self.assertIn('no reply', str(error))
        consumer, cleared = self.pending
        self.assertIsNone(cleared)
        self.report.delete_allocation_for_instance.assert_called_once_with(
            mock.ANY, consumer, consumer_type='migration', force=True)
        self.assertEqual([], self.recorded)

    def test_a_later_failed_scheduler_call_keeps_what_was_picked(self):
        self.answer([selection('a')],
                    oslo_messaging.MessagingTimeout('no reply'))
        self.assertEqual(['a'], [c.host for c in self.schedule(2)])

    def test_selection_and_alternates_claimed_for_their_migrations(self):
        self.query.select_destinations.return_value = [
            [selection('a'), selection('b'), selection('c')]]
        picked = self.schedule(3)
        self.assertEqual(['a', 'b', 'c'], sorted(c.host for c in picked))
        self.assertEqual(1, self.query.select_destinations.call_count)
        consumers = self.query.select_destinations.call_args.args[2]
        self.assertEqual([picked[0].migration_uuid], consumers)
        claimed = {c.args[1] for c in self.report.claim_resources.mock_calls}
        self.assertEqual({c.migration_uuid for c in picked[1:]}, claimed)
        # Every consumer was recorded before its claim.
        self.assertEqual({c.migration_uuid for c in picked},
                         {uuid for _, uuid in self.recorded})

    def answer(self, *answers):
        answers = list(answers)
        self.ignored = []

        def select(ctxt, spec, consumers, **kwargs):
            self.ignored.append(sorted(spec.ignore_hosts))
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return [answer]

        self.query.select_destinations.side_effect = select

    def test_further_calls_ignore_hosts_already_seen(self):
        self.answer([selection('a'), selection('b')], [selection('c')],
                    nova_exception.NoValidHost(reason='full'))
        picked = self.schedule(4, exclude={'x'})
        self.assertEqual(['a', 'b', 'c'], [c.host for c in picked])
        self.assertEqual([['src', 'x'], ['a', 'b', 'src', 'x'],
                          ['a', 'b', 'c', 'src', 'x']], self.ignored)

    def test_spread_prefers_new_zones_and_drops_unused_selection(self):
        self.flags(spread='availability_zone')
        zones = {'a': 'z1', 'b': 'z1', 'c': 'z2'}
        self.useFixture(fixtures.MockPatch(
            'nova.availability_zones.get_host_availability_zone',
            side_effect=lambda ctxt, host: zones[host]))
        self.query.select_destinations.return_value = [
            [selection('a'), selection('b'), selection('c')]]
        picked = self.schedule(2)
        self.assertEqual(['a', 'c'], sorted(c.host for c in picked))

    def test_unwanted_first_selection_releases_its_claim(self):
        self.flags(spread='availability_zone')
        zones = {'a': 'z1', 'b': 'z1', 'c': 'z2'}
        self.useFixture(fixtures.MockPatch(
            'nova.availability_zones.get_host_availability_zone',
            side_effect=lambda ctxt, host: zones[host]))
        self.answer([selection('a')], [selection('b'), selection('c')])
        picked = self.schedule(2)
        self.assertEqual(['a', 'c'], [c.host for c in picked])
        first_of_second_call = self.pending[2]
        self.assertNotIn(first_of_second_call,
                         [uuid for _, uuid in self.recorded])
        self.report.delete_allocation_for_instance.assert_called_once_with(
            mock.ANY, first_of_second_call, consumer_type='migration',
            force=True)


class ExplicitTest(base.TestCase):

    def test_refuses_source_and_duplicates(self):
        instance = mock.Mock(host='src')
        self.assertRaises(exceptions.InvalidSettings,
                          destinations.check_explicit, instance, ['a', 'a'])
        self.assertRaises(exceptions.InvalidSettings,
                          destinations.check_explicit, instance,
                          ['a', 'src'])
        self.assertEqual(['a', 'b'],
                         destinations.check_explicit(instance, ['a', 'b']))


class ClaimHostTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.query = mock.Mock()
        self.report = mock.Mock()
        self.spec = objects.RequestSpec(
            ignore_hosts=['other'], requested_destination=objects.Destination(
                cell=objects.CellMapping(uuid=CELL)))

    def claim(self):
        return destinations.claim_host(
            mock.Mock(), self.query, self.report, self.spec,
            mock.Mock(host='src'), 'a', 'mig-a')

    def test_the_scheduler_is_asked_for_the_named_host_alone(self):
        self.query.select_destinations.return_value = [[selection('a')]]
        self.assertEqual('a', self.claim().service_host)
        args, kwargs = self.query.select_destinations.call_args
        spec, consumers = args[1], args[2]
        self.assertEqual(['mig-a'], consumers)
        self.assertEqual('a', spec.requested_destination.host)
        self.assertEqual(CELL, spec.requested_destination.cell.uuid)
        self.assertEqual(['src'], spec.ignore_hosts)
        self.assertFalse(kwargs['return_alternates'])
        # The group's spec is untouched: other hosts are claimed with it.
        self.assertNotIn('host', self.spec.requested_destination)
        self.assertEqual(['other'], self.spec.ignore_hosts)

    def test_a_refused_host_leaves_no_claim_to_drop(self):
        self.query.select_destinations.side_effect = (
            nova_exception.NoValidHost(reason='full'))
        self.assertRaises(nova_exception.NoValidHost, self.claim)
        self.report.delete_allocation_for_instance.assert_not_called()

    def test_a_call_without_answer_drops_the_claim_it_may_have_made(self):
        self.query.select_destinations.side_effect = (
            oslo_messaging.MessagingTimeout('no reply'))
        self.assertRaises(oslo_messaging.MessagingTimeout, self.claim)
        self.report.delete_allocation_for_instance.assert_called_once_with(
            mock.ANY, 'mig-a', consumer_type='migration', force=True)
