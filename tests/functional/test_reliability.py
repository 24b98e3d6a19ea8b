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

"""Regressions of issue 9: restarts, lost replies and two conductors."""

import datetime
import threading

import fixtures
import oslo_messaging
from oslo_utils import timeutils

from nova.compute import rpcapi as nova_compute_rpcapi
from nova.compute import task_states
from nova import context as nova_context
from nova import exception as nova_exception
from nova import objects
from nova.scheduler.client import query

from nova_multidest.compute import driver
from nova_multidest.compute import rpcapi as compute_rpcapi
from nova_multidest.conductor import group
from nova_multidest.conductor import records
from nova_multidest.conductor import resources
from nova_multidest.conductor import rpcapi as conductor_rpcapi
from nova_multidest.conductor import unstarted
from nova_multidest import exceptions
from nova_multidest import vocabulary
from tests.functional import base


class ReliabilityTestBase(base.MultiDestMigrationTestBase):

    COMPUTES = 5

    def setUp(self):
        super().setUp()
        self.source = self.hostnames[0]
        self.server = self.boot_server(
            host=self.source, networks=[{'port': self.neutron.port_1['id']}])

    def start_second_conductor(self):
        """Another nova-multidest-conductor, conductor-2, in this process.

        CONF.host names it meanwhile; returns it and the host the caller
        sets back (self.flags) once its calls to it are made.
        """
        first_host = base.CONF.host
        self.flags(host='conductor-2')
        second = self.start_service(
            'multidest-conductor', host='conductor-2',
            binary=vocabulary.CONDUCTOR_BINARY,
            manager=base.CONDUCTOR_MANAGER,
            topic=base.CONF.multidest.conductor_topic)
        return second, first_host

    def assert_no_hostless_migration(self):
        for migration in self.get_migrations(self.server['id']):
            self.assertIsNotNone(migration.dest_compute, migration.status)

    def assert_ended_on(self, host):
        """The invariants hold once late replies of a dead thread landed."""
        self.assert_no_hostless_migration()
        failure = []

        def holds():
            try:
                self.assert_invariants(self.server, host)
            except AssertionError as error:
                failure[:] = [error]
                return False
            return True

        base.wait_until(holds, timeout=30,
                        message='invariants never held: %s' % failure)


class ConductorRestartTest(ReliabilityTestBase):

    def restart_at(self, gate, lose):
        self.request_migration(self.server, count=4)
        gate.wait_reached()
        self.restart_multidest_conductor()
        result = self.wait_for_group_end(self.server)
        if lose:
            gate.lose()
        else:
            gate.release()
        return result

    def test_restart_during_scheduling_with_four_destinations(self):
        gate = self.useFixture(base.CallGate(
            query.SchedulerQueryClient, 'select_destinations', limit=1,
            host_of=None))
        result = self.restart_at(gate, lose=False)
        self.assertEqual('failed', result['result'])
        # The old thread, released after recovery, stops at its next step
        # and leaves nothing: no claim, no Migration without a host.
        self.assert_ended_on(self.source)
        self.assertEqual([], list(self.get_migrations(self.server['id'])))

    def test_restart_during_prepare_with_four_destinations(self):
        gate = self.hold_compute_calls('prepare_destination', limit=1)
        result = self.restart_at(gate, lose=True)
        self.assertEqual('failed', result['result'])
        self.assert_ended_on(self.source)


class PastPostLiveRestartTest(ReliabilityTestBase):

    def test_restart_after_novas_post_live_migration(self):
        # Nova moved the server; the revert of the losers, the claim and
        # the source cleanup that follow are the recovery's to do.
        after = self.useFixture(base.CallGate(
            group.Group, '_after_post_live', limit=1, host_of=None))
        self.request_migration(self.server,
                               destinations=self.hostnames[1:3])
        after.wait_reached()
        self.restart_multidest_conductor()
        result = self.wait_for_group_end(self.server)
        after.lose()
        self.assertEqual('completed', result['result'])
        self.assert_ended_on(result['host'])


class RecoveryRetryTest(ReliabilityTestBase):
    """A recovery that fails is retried by the periodic look, alone.

    The previous owner's call that was in flight at its restart fails
    afterwards: its rollback must leave the group to the new owner, whose
    own attempt fails once in Placement and is retried a minute later.
    """

    def test_failed_recovery_is_retried_and_the_old_owner_stays_out(self):
        real_adopt = resources.adopt_claim
        adoptions = []

        def fail_first(*args, **kwargs):
            adoptions.append(args[3])
            if len(adoptions) == 1:
                raise nova_exception.AllocationMoveFailed(
                    source_consumer=args[3], target_consumer=args[2].uuid,
                    error='injected')
            return real_adopt(*args, **kwargs)

        self.useFixture(fixtures.MockPatch(
            'nova_multidest.conductor.resources.adopt_claim',
            side_effect=fail_first))
        post_live = self.useFixture(base.CallGate(
            nova_compute_rpcapi.ComputeAPI,
            'post_live_migration_at_destination', limit=1, host_of=None))
        self.request_migration(self.server,
                               destinations=self.hostnames[1:3])
        post_live.wait_reached()
        manager = self.restart_multidest_conductor().manager
        base.wait_until(lambda: manager._recovery.done(),
                        message='recovery at start never ended')
        faults = self.get_instance_faults(self.server['id'])
        self.assertIn('could not finish or roll back', faults[0].message)
        self.assertIn('injected', faults[0].message)
        self.assertFalse(self.group_ended(self.server['id']))

        post_live.lose()
        manager._recover_expired(nova_context.get_admin_context())
        result = self.wait_for_group_end(self.server)
        self.assertEqual('completed', result['result'])
        # One claim, moved by the new owner's second attempt only.
        self.assertEqual(2, len(adoptions))
        self.assertEqual(1, len(set(adoptions)))
        self.assert_ended_on(result['host'])


class SchedulerErrorTest(ReliabilityTestBase):

    def test_scheduler_messaging_timeout_ends_the_group(self):
        self.useFixture(fixtures.MockPatchObject(
            query.SchedulerQueryClient, 'select_destinations',
            side_effect=oslo_messaging.MessagingTimeout('no reply')))
        result = self.migrate_and_wait(self.server, count=2)
        self.assertEqual('failed', result['result'])
        self.assertIn('no reply', str(result['reasons']))
        self.assert_ended_on(self.source)
        faults = self.get_instance_faults(self.server['id'])
        self.assertIn('The scheduler call failed', faults[0].message)


class TwoConductorsTest(ReliabilityTestBase):

    def test_a_second_conductor_leaves_a_live_group_alone(self):
        waits = self.hold_compute_calls('wait_destination')
        self.request_migration(self.server, destinations=self.hostnames[1:3])
        waits.wait_reached(2)
        second, first_host = self.start_second_conductor()
        second.manager.recover()
        second.manager.recover(at_start=False)
        self.flags(host=first_host)
        instance = self.get_instance(self.server['id'])
        self.assertEqual('1', instance.system_metadata[
            vocabulary.SYSMETA_GENERATION])
        waits.release()
        result = self.wait_for_group_end(self.server)
        self.assertEqual('completed', result['result'])
        self.assert_ended_on(result['host'])


class FencedWriteTest(ReliabilityTestBase):
    """Ownership is checked in the transaction that writes, not before it.

    A conductor frozen between its ownership check and its next write, or
    two conductors that both find the owner down, must not write over the
    records of the one that holds the group.
    """

    def test_a_stale_owner_and_a_second_takeover_write_nothing(self):
        waits = self.hold_compute_calls('wait_destination')
        self.request_migration(self.server, destinations=self.hostnames[1:3])
        waits.wait_reached(2)
        ctxt = self.cell_context()
        stale_owner = group.Group(ctxt, self.get_instance(self.server['id']),
                                  clients=None, owner=base.CONF.host)
        stale_owner.hold()
        late_rescuer = self.get_instance(self.server['id'])

        records.take_over(ctxt, self.get_instance(self.server['id']),
                          'conductor-2')

        def elect_after_check():
            with stale_owner.owned():
                records.record_winner(stale_owner.instance, 'stale-winner')

        self.assertRaises(exceptions.GroupFenced, elect_after_check)
        self.assertRaises(exceptions.GroupFenced, records.take_over, ctxt,
                          late_rescuer, 'conductor-3')
        stored = self.get_instance(self.server['id']).system_metadata
        self.assertEqual(('conductor-2', '2'), records.ownership(stored))
        self.assertNotIn(vocabulary.SYSMETA_WINNER, stored)

        # The new owner ends the group; the first conductor's task, once
        # its calls return, is fenced at its next step.
        second, first_host = self.start_second_conductor()
        waits.release()
        second.manager.recover(at_start=False)
        self.flags(host=first_host)
        result = self.wait_for_group_end(self.server)
        self.assertEqual('failed', result['result'])
        self.assert_ended_on(self.source)


class SourceRestartAfterElectionTest(ReliabilityTestBase):
    """The source restarts once the winner runs, before Nova knows.

    Nova's start-up would reset the MIGRATING server on its old host (the
    winning Migration set to error, task_state cleared) and fail when the
    group ended meanwhile; the source must start and the winner stay.
    """

    def restart_source_while(self, gate):
        self.request_migration(self.server,
                               destinations=self.hostnames[1:3])
        gate.wait_reached()
        winner_uuid = self.get_instance(
            self.server['id']).system_metadata[vocabulary.SYSMETA_WINNER]
        self.restart_compute_service(self.source)
        gate.release()
        result = self.wait_for_group_end(self.server)
        [winner] = [m for m in self.get_migrations(self.server['id'])
                    if m.uuid == winner_uuid]
        self.assertEqual({'result': 'completed',
                          'host': winner.dest_compute}, result)
        self.assertEqual('completed', winner.status)
        [service] = self.admin_api.get_services(binary='nova-compute',
                                                host=self.source)
        self.assertEqual('up', service['state'])
        self.assert_ended_on(winner.dest_compute)

    def test_source_restart_between_election_and_bookkeeping(self):
        self.restart_source_while(self.useFixture(base.CallGate(
            group.Group, 'finish', limit=1, host_of=None)))

    def test_source_restart_during_bookkeeping(self):
        self.restart_source_while(self.useFixture(base.CallGate(
            nova_compute_rpcapi.ComputeAPI,
            'post_live_migration_at_destination', limit=1, host_of=None)))

    def test_the_group_ends_while_the_source_starts(self):
        """The group ends after Nova listed the source's instances.

        Nova's start-up then holds a MIGRATING copy of a server whose
        task_state is already gone: resetting it would fail the start.
        """
        finish = self.useFixture(base.CallGate(
            group.Group, 'finish', limit=1, host_of=None))
        startup = self.useFixture(base.CallGate(
            driver.MultiDestLibvirtDriver, 'process_instances_at_startup',
            limit=1, host_of=None))
        self.request_migration(self.server,
                               destinations=self.hostnames[1:3])
        finish.wait_reached()
        started = []

        def restart():
            try:
                started.append(self.restart_compute_service(self.source))
            except Exception as error:
                started.append(error)

        thread = threading.Thread(target=restart)
        thread.start()
        startup.wait_reached()
        finish.release()
        result = self.wait_for_group_end(self.server)
        startup.release()
        thread.join(60)
        self.assertNotIsInstance(started[0], Exception, started)
        self.assertEqual('completed', result['result'])
        [service] = self.admin_api.get_services(binary='nova-compute',
                                                host=self.source)
        self.assertEqual('up', service['state'])
        self.assert_ended_on(result['host'])


class ForceCompleteTest(ReliabilityTestBase):
    """A force complete Nova accepts always reaches the stream.

    Campaign seed 1204, run 49: a warm-up group whose Migrations were
    ``running`` before the source held its stream; a force complete sent
    then was answered 202, found no stream on the source and was lost, so
    the warm-up held until the completion timeout and every destination
    failed, though three of the four had no fault.
    """

    def force_complete(self, migration):
        return self.admin_api.api_post(
            '/servers/%s/migrations/%d/action' % (
                self.server['id'], migration.id),
            {'force_complete': None}, check_response_status=None)

    def running(self):
        return [m for m in self.get_migrations(self.server['id'])
                if m.status == vocabulary.MigrationStatus.RUNNING]

    def test_force_complete_as_the_stream_starts(self):
        self.admin_api.microversion = '2.80'
        # A lost force complete ends the group then, not minutes later.
        self.flags(completion_timeout=60, group='multidest')
        faulty = self.hostnames[2]
        self.inject_fault(faulty, vocabulary.DestinationPhase.COMPLETE)
        starting = self.useFixture(base.CallGate(
            compute_rpcapi.ComputeAPI, 'start_stream', limit=1,
            host_of=None))
        self.request_migration(self.server, destinations=self.hostnames[1:],
                               warm_up=True)
        starting.wait_reached()
        # The source does not stream yet: Nova must refuse, not drop it.
        migrations = self.get_migrations(self.server['id'])
        self.assertEqual(4, len(migrations))
        for migration in migrations:
            self.assertEqual(400, self.force_complete(migration).status,
                             migration.status)
        starting.release()
        running = base.wait_until(self.running, timeout=60,
                                  message='no destination ever ran')
        self.assertEqual(202, self.force_complete(running[0]).status)
        result = self.wait_for_group_end(self.server)
        self.assertEqual('completed', result['result'], result)
        self.assertNotEqual(faulty, result['host'])
        self.assert_ended_on(result['host'])


class UnstartedRequestTest(ReliabilityTestBase):

    def test_a_lost_cast_is_rolled_back_within_the_bound(self):
        self.flags(accept_timeout=10, group='multidest')
        with fixtures.MockPatchObject(conductor_rpcapi.ConductorAPI,
                                      'live_migrate_multi'):
            self.request_migration(self.server, count=2)
        instance = self.get_instance(self.server['id'])
        self.assertEqual(task_states.MIGRATING, instance.task_state)
        # The action is older than the bound once time moves on.
        future = timeutils.utcnow() + datetime.timedelta(seconds=11)
        with fixtures.MockPatch('oslo_utils.timeutils.utcnow',
                                return_value=future):
            self.multidest_conductor.manager._roll_back_unstarted(
                nova_context.get_admin_context())
        instance = self.get_instance(self.server['id'])
        self.assertIsNone(instance.task_state)
        faults = self.get_instance_faults(self.server['id'])
        self.assertIn('within 10 seconds', faults[0].message)
        actions = objects.InstanceActionList.get_by_instance_uuid(
            self.cell_context(), self.server['id'])
        self.assertEqual('Error', actions[0].message)
        self.assertIsNotNone(actions[0].finish_time)
        self.assert_invariants(self.server, self.source)

    def test_a_young_request_is_not_touched(self):
        self.flags(accept_timeout=600, group='multidest')
        with fixtures.MockPatchObject(conductor_rpcapi.ConductorAPI,
                                      'live_migrate_multi'):
            self.request_migration(self.server, count=2)
        unstarted.roll_back_unstarted(nova_context.get_admin_context())
        self.assertEqual(task_states.MIGRATING,
                         self.get_instance(self.server['id']).task_state)
