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

import contextlib
import threading
from unittest import mock

import fixtures
import oslo_messaging

from nova import exception as nova_exception
from nova import objects

from nova_multidest.conductor import group as group_mod
from nova_multidest.conductor import records
from nova_multidest.conductor import recovery
from nova_multidest.conductor.tasks import live_migrate_multi as task_mod
from nova_multidest import exceptions
from nova_multidest import vocabulary
from tests import base

objects.register_all()
CELL = 'c5b4c3a1-7f1e-4d0c-9b7a-2a7e3c1d9f00'


def destination(host, prepared=False):
    return group_mod.Destination(
        host, mock.Mock(uuid='mig-%s' % host, dest_compute=host,
                        status=vocabulary.MigrationStatus.ACCEPTED),
        prepare_sent=prepared)


@contextlib.contextmanager
def _owned_in_memory(context, instance, held):
    """records.owned without a database: the instance is the record."""
    records.check_held(instance.uuid, dict(instance.system_metadata), held)
    yield


class TaskTestBase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.instance = mock.Mock(uuid='inst', host='src', node='src',
                                  system_metadata={}, task_state='migrating',
                                  flavor=mock.Mock(memory_mb=512))
        self.instance.flavor.extra_specs = {}
        self.clients = mock.Mock()
        self.compute = self.clients.multidest_compute
        self.compute.prepare_destination.return_value = {
            'agent_address': ['127.0.0.1', 1], 'attachment_ids': {}}
        self.task = task_mod.LiveMigrateMultiTask(
            mock.Mock(), self.instance, self.clients, destinations=None)
        for name in ('_check_host_usable', '_check_same_cell',
                     '_check_hypervisor'):
            self.useFixture(_patch_object(self.task, name))
        self.useFixture(_patch_object(self.task.group,
                                      '_record_destination_event'))
        self.release = self.useFixture(_patch(
            'nova_multidest.conductor.resources.release',
            return_value=[])).mock
        self.useFixture(_patch(
            'nova_multidest.conductor.resources.bind_ports'))
        self.useFixture(_patch(
            'nova_multidest.conductor.resources.sweep_attachments'))
        self.useFixture(_patch('nova.compute.utils.notify_about_instance_'
                               'action'))
        self.fault = self.useFixture(_patch(
            'nova.compute.utils.add_instance_fault_from_exc')).mock
        # The records as stored: what fencing checks read.
        self.useFixture(_patch(
            'nova.objects.Instance.get_by_uuid',
            side_effect=lambda *a, **k: mock.Mock(
                system_metadata=dict(self.instance.system_metadata))))
        self.useFixture(_patch('nova_multidest.conductor.records.owned',
                               side_effect=_owned_in_memory))

    def choose(self, *hosts):
        chosen = [destination(host) for host in hosts]
        self.useFixture(_patch_object(self.task, '_choose',
                                      return_value=chosen))
        return chosen


class TaskTest(TaskTestBase):

    def test_destinations_are_prepared_concurrently(self):
        chosen = self.choose('a', 'b', 'c')
        all_in_flight = threading.Barrier(3, timeout=10)

        def prepare(*args, **kwargs):
            all_in_flight.wait()
            return {'agent_address': ['127.0.0.1', 1]}

        self.compute.prepare_destination.side_effect = prepare
        self.assertEqual(chosen, self.task._prepare_round(1))

    def test_failed_destination_is_reverted_alone(self):
        good, bad = self.choose('good', 'bad')

        def prepare(ctxt, instance, migration, *args):
            if migration is bad.migration:
                raise exceptions.HypervisorError(operation='start',
                                                 reason='boom')
            return {'agent_address': ['127.0.0.1', 1]}

        self.compute.prepare_destination.side_effect = prepare
        self.assertEqual([good], self.task._prepare_round(1))
        self.compute.revert_destination.assert_called_once_with(
            mock.ANY, self.instance, bad.migration)
        self.assertEqual(['bad'],
                         [c.args[3] for c in self.release.call_args_list])
        self.assertEqual(vocabulary.MigrationStatus.FAILED,
                         bad.migration.status)
        self.assertEqual(vocabulary.MigrationStatus.PREPARING,
                         good.migration.status)
        self.assertIn('prepare', bad.reason)

    def block_migration_checks(self, versions):
        md = objects.LibvirtLiveMigrateData(block_migration=True)
        self.clients.compute_rpcapi.check_can_live_migrate_destination.\
            return_value = md
        self.useFixture(_patch(
            'nova_multidest.compute.rpcapi.host_version',
            side_effect=lambda ctxt, host: versions[host]))
        self.compute.check_source_disks.return_value = None
        self.compute.prepare_destination.return_value = {
            'agent_address': ['127.0.0.1', 1],
            'disk_agent_address': ['127.0.0.1', 2]}

    def test_destination_too_old_for_disks_is_left_out(self):
        new, old = self.choose('new', 'old')
        self.block_migration_checks({'src': '1.3', 'new': '1.3',
                                     'old': '1.0'})
        self.assertEqual([new], self.task._prepare_round(1))
        self.assertEqual(['new'], [
            c.args[2].dest_compute
            for c in self.compute.prepare_destination.call_args_list])
        self.assertIn('Host old serves nova-multidest compute RPC version '
                      '1.0', old.reason)
        self.assertIn('needs version 1.3', old.reason)
        self.assertEqual(['127.0.0.1', 2], new.disk_agent_address)
        self.compute.check_source_disks.assert_called_once_with(
            mock.ANY, self.instance)

    def test_source_too_old_for_disks_leaves_every_destination_out(self):
        a, b = self.choose('a', 'b')
        self.block_migration_checks({'src': '1.0', 'a': '1.3', 'b': '1.3'})
        self.assertEqual([], self.task._prepare_round(1))
        self.compute.prepare_destination.assert_not_called()
        self.assertIn('Host src serves', a.reason)

    def test_a_disk_that_cannot_be_mirrored_refuses_before_binding(self):
        a, b = self.choose('a', 'b')
        self.block_migration_checks({'src': '1.3', 'a': '1.3', 'b': '1.3'})
        self.compute.check_source_disks.return_value = (
            'Disk vdb cannot be copied to several destinations: its format '
            'is vmdk')
        self.assertEqual([], self.task._prepare_round(1))
        self.compute.prepare_destination.assert_not_called()
        self.assertIn('vdb', a.reason)
        self.assertEqual(1, self.compute.check_source_disks.call_count)

    def test_block_migration_streams_disks_to_every_destination(self):
        ready = [destination('a'), destination('b')]
        for index, d in enumerate(ready):
            d.agent_address = ['127.0.0.1', index]
            d.disk_agent_address = ['127.0.0.1', 10 + index]
        self.useFixture(_patch_object(self.task.group, 'stream'))
        self.compute.wait_destination.return_value = 'failed'
        self.useFixture(_patch_object(self.task.group, 'revert'))
        self.task._stream_and_elect(ready)
        args = self.compute.start_stream.call_args
        self.assertTrue(args.kwargs['block_migration'])
        self.assertEqual([['127.0.0.1', 10], ['127.0.0.1', 11]],
                         [d['disk_agent_address'] for d in args.args[2]])

    def test_migrations_run_once_the_source_holds_its_stream(self):
        """Nova's force complete and abort go to the stream that runs."""
        ready = [destination('a', prepared=True),
                 destination('b', prepared=True)]
        for d in ready:
            d.migration.status = vocabulary.MigrationStatus.PREPARING
        at_start = []

        def start_stream(*args, **kwargs):
            at_start.extend(d.migration.status for d in ready)

        self.compute.start_stream.side_effect = start_stream
        self.compute.wait_destination.return_value = 'failed'
        self.useFixture(_patch_object(self.task.group, 'revert'))
        self.task.secret = b'x'
        self.task._stream_and_elect(ready)
        self.assertEqual([vocabulary.MigrationStatus.PREPARING] * 2,
                         at_start)
        self.assertEqual([vocabulary.MigrationStatus.RUNNING] * 2,
                         [d.migration.status for d in ready])

    def test_winner_is_recorded_before_it_resumes(self):
        winner = destination('a')
        seen = {}

        def resume(ctxt, instance, migration):
            seen.update(instance.system_metadata)

        self.compute.resume_destination.side_effect = resume
        self.assertTrue(self.task.group.elect(winner))
        self.assertEqual('mig-a', seen[vocabulary.SYSMETA_WINNER])
        self.assertNotIn(vocabulary.SYSMETA_RESUMED, seen)
        self.assertEqual('mig-a', records.resumed(self.instance))

    def test_next_completed_destination_wins_if_first_cannot_resume(self):
        first = destination('first', prepared=True)
        second = destination('second', prepared=True)
        resume_tried = threading.Event()

        def wait(ctxt, instance, migration, timeout):
            if migration is second.migration:
                resume_tried.wait(10)
            return 'completed'

        def resume(ctxt, instance, migration):
            if migration is first.migration:
                resume_tried.set()
                raise exceptions.HypervisorError(operation='resume',
                                                 reason='no')

        self.compute.wait_destination.side_effect = wait
        self.compute.resume_destination.side_effect = resume
        self.task.secret = b'x'
        self.assertEqual((second, []),
                         self.task._stream_and_elect([first, second]))
        self.assertEqual(vocabulary.MigrationStatus.FAILED,
                         first.migration.status)
        self.assertEqual('mig-second', records.winner(self.instance))
        self.compute.revert_destination.assert_called_once_with(
            mock.ANY, self.instance, first.migration)

    def test_too_few_destinations_keep_the_source(self):
        self.flags(min_destinations=2)
        good, bad = self.choose('good', 'bad')

        def prepare(ctxt, instance, migration, *args):
            if migration is bad.migration:
                raise RuntimeError('boom')
            return {'agent_address': ['127.0.0.1', 1]}

        self.compute.prepare_destination.side_effect = prepare
        self.useFixture(_patch_object(self.task, '_request_spec'))
        self.assertRaises(exceptions.AllDestinationsFailed,
                          self.task._execute)
        self.compute.start_stream.assert_not_called()
        self.compute.resume_source.assert_called_once_with(
            mock.ANY, self.instance)
        self.assertEqual(vocabulary.MigrationStatus.CANCELLED,
                         good.migration.status)
        self.assertEqual(vocabulary.MigrationStatus.FAILED,
                         bad.migration.status)
        self.assertIsNone(self.instance.task_state)
        self.assertFalse(records.group_in_progress(self.instance))
        self.fault.assert_called_once()

    def test_stopping_conductor_abandons_without_cleanup(self):
        self.task.group._stopping = lambda: True
        self.choose('a')
        self.assertRaises(exceptions.ConductorStopping,
                          self.task._prepare_round, 1)
        self.compute.prepare_destination.assert_not_called()
        self.release.assert_not_called()

    def test_what_a_revert_cannot_release_is_in_the_reason(self):
        loser = destination('a', prepared=True)
        loser.reason = 'stream: lost'
        self.release.return_value = ['placement allocation of consumer '
                                     'mig-a (placement is down)']
        self.task.group.revert(loser, vocabulary.MigrationStatus.FAILED)
        self.assertEqual('stream: lost; left behind: placement allocation '
                         'of consumer mig-a (placement is down)',
                         self.task.group.reasons['a'])
        self.assertEqual(vocabulary.MigrationStatus.FAILED,
                         loser.migration.status)

    def test_a_lost_resume_reply_never_elects_another_copy(self):
        self.flags(election_timeout=1)
        self.useFixture(_patch_object(group_mod, '_RESUME_RETRY_INTERVAL',
                                      new=0))
        winner = destination('a', prepared=True)
        self.compute.resume_destination.side_effect = (
            oslo_messaging.MessagingTimeout('no reply'))
        self.assertRaises(exceptions.WinnerUnknown,
                          self.task.group.elect, winner)
        self.assertEqual('mig-a', records.winner(self.instance))
        self.assertGreater(self.compute.resume_destination.call_count, 1)
        self.compute.revert_destination.assert_not_called()

    def test_a_lost_reply_then_an_answer_resumes_the_same_winner(self):
        winner = destination('a', prepared=True)
        self.useFixture(_patch_object(group_mod, '_RESUME_RETRY_INTERVAL',
                                      new=0))
        self.compute.resume_destination.side_effect = [
            oslo_messaging.MessagingTimeout('no reply'), None]
        self.assertTrue(self.task.group.elect(winner))
        self.assertEqual('mig-a', records.resumed(self.instance))


class NamedHostsTest(TaskTestBase):
    """Named hosts: one scheduler call each, all at once, then prepared."""

    def setUp(self):
        super().setUp()
        self.task.requested_hosts = ['a', 'b', 'c']
        self.migrations = {}

        def new_migration(host):
            migration = mock.Mock(uuid='mig-%s' % host, dest_compute=host,
                                  status=vocabulary.MigrationStatus.ACCEPTED)
            self.migrations[host] = migration
            return migration

        self.useFixture(_patch_object(self.task, '_new_migration',
                                      side_effect=new_migration))
        self.useFixture(_patch_object(self.task, '_compute_node_id',
                                      return_value=7))
        self.useFixture(_patch_object(
            self.task, '_request_spec', return_value=objects.RequestSpec(
                requested_destination=objects.Destination(
                    cell=objects.CellMapping(uuid=CELL)))))
        self.query = self.clients.query_client
        self.compute.prepare_destination.side_effect = (
            lambda ctxt, inst, migration, *args: {
                'agent_address': ['127.0.0.1', 1]})

    def select(self, hosts_seen=None, before=None):
        """A scheduler that picks the one host it is asked for."""

        def select_destinations(ctxt, spec, consumers, return_objects,
                                return_alternates):
            host = spec.requested_destination.host
            if hosts_seen is not None:
                hosts_seen.append((host, consumers, spec.ignore_hosts,
                                   return_alternates))
            if before is not None:
                before(host)
            return [[mock.Mock(service_host=host, nodename='%s-node' % host)]]

        self.query.select_destinations.side_effect = select_destinations

    def hosts(self, destinations):
        return [d.host for d in destinations]

    def test_each_named_host_is_claimed_alone_all_at_once(self):
        calls = []
        all_in_flight = threading.Barrier(3, timeout=10)
        self.select(calls, lambda host: all_in_flight.wait())
        ready = self.task._prepare_round(1)
        self.assertEqual(['a', 'b', 'c'], self.hosts(ready))
        self.assertEqual(
            [('a', ['mig-a'], ['src'], False),
             ('b', ['mig-b'], ['src'], False),
             ('c', ['mig-c'], ['src'], False)], sorted(calls))
        self.assertEqual(['a-node', 'b-node', 'c-node'],
                         [d.node for d in ready])
        self.assertEqual('a-node', self.migrations['a'].dest_node)
        # The shared spec is left as it was, for the next round.
        self.assertNotIn('host', self.task._request_spec()
                         .requested_destination)

    def test_a_host_is_prepared_while_another_is_still_being_claimed(self):
        self.task.requested_hosts = ['slow', 'fast']
        fast_prepared = threading.Event()

        def before(host):
            if host == 'slow' and not fast_prepared.wait(10):
                raise nova_exception.NoValidHost(reason='fast never '
                                                 'prepared')

        def prepare(ctxt, instance, migration, *args):
            if migration.dest_compute == 'fast':
                fast_prepared.set()
            return {'agent_address': ['127.0.0.1', 1]}

        self.select(before=before)
        self.compute.prepare_destination.side_effect = prepare
        self.assertEqual(['slow', 'fast'],
                         self.hosts(self.task._prepare_round(1)))

    def test_a_failed_scheduler_call_fails_its_host_alone(self):
        def before(host):
            if host == 'b':
                raise oslo_messaging.MessagingTimeout('no reply')

        self.select(before=before)
        self.assertEqual(['a', 'c'], self.hosts(self.task._prepare_round(1)))
        # The call may have claimed all the same: dropped, then released.
        self.clients.report_client.delete_allocation_for_instance.\
            assert_called_once_with(mock.ANY, 'mig-b',
                                    consumer_type='migration', force=True)
        self.assertEqual([('b', 'mig-b')],
                         [(c.args[3], c.args[4])
                          for c in self.release.call_args_list])
        self.assertEqual(vocabulary.MigrationStatus.FAILED,
                         self.migrations['b'].status)
        self.assertEqual('claim: the scheduler call failed: no reply',
                         self.task.group.reasons['b'])
        self.compute.revert_destination.assert_not_called()
        self.assertEqual(2, self.compute.prepare_destination.call_count)

    def test_a_claim_made_after_the_conductor_stopped_is_dropped(self):
        self.task.requested_hosts = ['a']
        stopping = threading.Event()

        def before(host):
            # The conductor stops, and the next one's recovery runs,
            # while the scheduler call is in flight.
            stopping.set()

        self.task.group._stopping = stopping.is_set
        self.select(before=before)
        self.assertRaises(exceptions.ConductorStopping,
                          self.task._prepare_round, 1)
        self.clients.report_client.delete_allocation_for_instance.\
            assert_called_once_with(mock.ANY, 'mig-a',
                                    consumer_type='migration', force=True)
        self.compute.prepare_destination.assert_not_called()


class FinishTest(TaskTestBase):

    def test_the_winner_is_active_before_the_losers_are_reverted(self):
        winner = destination('a', prepared=True)
        losers = [destination('b', prepared=True),
                  destination('c', prepared=True)]
        calls = []
        self.clients.compute_rpcapi.post_live_migration_at_destination.\
            side_effect = lambda *args: calls.append('post')
        self.compute.revert_destination.side_effect = (
            lambda ctxt, instance, migration: calls.append(
                'revert %s' % migration.dest_compute))
        self.useFixture(_patch('nova.availability_zones.'
                               'get_host_availability_zone'))
        self.useFixture(_patch(
            'nova_multidest.conductor.notifications.end'))
        records.start_group(self.instance, 1, 'conductor-1')
        self.task.group.finish(winner, losers)
        self.assertEqual('post', calls[0])
        self.assertEqual(['revert b', 'revert c'], sorted(calls[1:]))
        self.assertEqual([vocabulary.MigrationStatus.CANCELLED] * 2,
                         [d.migration.status for d in losers])
        self.assertEqual(vocabulary.MigrationStatus.COMPLETED,
                         winner.migration.status)
        self.compute.cleanup_source.assert_called_once()
        self.clients.report_client.move_allocations.assert_called_once_with(
            mock.ANY, 'mig-a', 'inst')

    def finish_past_post_live(self, winner, losers):
        """Finish a group whose server Nova already moved to ``winner``."""
        self.useFixture(_patch('nova.availability_zones.'
                               'get_host_availability_zone'))
        self.useFixture(_patch(
            'nova_multidest.conductor.notifications.end'))
        self.instance.host = winner.host
        records.start_group(self.instance, 1, 'conductor-1')
        self.task.group.finish(winner, losers)

    def test_a_winner_past_post_live_is_finished_and_its_source_cleaned(self):
        # A conductor died after Nova's post-live-migration: the source
        # cleanup that follows it may never have run.
        winner = destination('a', prepared=True)
        loser = destination('b', prepared=True)
        self.finish_past_post_live(winner, [loser])
        self.clients.compute_rpcapi.post_live_migration_at_destination.\
            assert_not_called()
        self.compute.cleanup_source.assert_called_once_with(
            mock.ANY, self.instance, winner.migration, migrate_data=None)
        self.compute.revert_destination.assert_called_once_with(
            mock.ANY, self.instance, loser.migration)
        self.clients.report_client.move_allocations.assert_called_once_with(
            mock.ANY, 'mig-a', 'inst')
        self.assertEqual(vocabulary.MigrationStatus.COMPLETED,
                         winner.migration.status)

    def test_a_source_whose_volumes_moved_is_not_cleaned_again(self):
        winner = destination('a', prepared=True)
        winner.attachment_ids = {'vol-1': 'attachment-2'}
        self.finish_past_post_live(winner, [])
        self.compute.cleanup_source.assert_not_called()
        self.assertEqual(vocabulary.MigrationStatus.COMPLETED,
                         winner.migration.status)

    def finish_after_another_call(self, host_after, task_state_after):
        """Our post-live call is refused; the records then read so."""
        winner = destination('a', prepared=True)
        self.clients.compute_rpcapi.post_live_migration_at_destination.\
            side_effect = nova_exception.UnexpectedTaskStateError(
                instance_uuid='inst', expected='migrating', actual=None)

        def refresh():
            self.instance.host = host_after
            self.instance.task_state = task_state_after

        self.instance.refresh.side_effect = refresh
        self.useFixture(_patch('nova.availability_zones.'
                               'get_host_availability_zone'))
        self.useFixture(_patch(
            'nova_multidest.conductor.notifications.end'))
        records.start_group(self.instance, 1, 'conductor-1')
        self.task.group.finish(winner, [destination('b', prepared=True)])
        return winner

    def test_a_previous_owners_post_live_call_that_landed_first(self):
        winner = self.finish_after_another_call('a', None)
        self.assertEqual(vocabulary.MigrationStatus.COMPLETED,
                         winner.migration.status)
        self.clients.report_client.move_allocations.assert_called_once_with(
            mock.ANY, 'mig-a', 'inst')
        self.assertFalse(records.group_in_progress(self.instance))

    def test_a_stopped_owner_whose_call_another_answered_stops(self):
        # Its call was lost at its restart; the next owner's landed.
        self.task.group._stopping = lambda: self.clients.compute_rpcapi.\
            post_live_migration_at_destination.called
        self.assertRaises(exceptions.ConductorStopping,
                          self.finish_after_another_call, 'a', None)
        self.clients.report_client.move_allocations.assert_not_called()
        self.compute.revert_destination.assert_not_called()
        self.compute.cleanup_source.assert_not_called()
        self.assertTrue(records.group_in_progress(self.instance))

    def test_a_refused_post_live_call_on_a_server_elsewhere_fails(self):
        self.assertRaises(nova_exception.UnexpectedTaskStateError,
                          self.finish_after_another_call, 'src', None)
        self.assertRaises(nova_exception.UnexpectedTaskStateError,
                          self.finish_after_another_call, 'a', 'migrating')
        self.clients.report_client.move_allocations.assert_not_called()


class RollbackTest(TaskTestBase):
    """An unexpected failure ends the group as recovery would."""

    def setUp(self):
        super().setUp()
        self.migrations = []
        self.useFixture(_patch(
            'nova_multidest.conductor.records.group_migrations',
            side_effect=lambda ctxt, inst: list(self.migrations)))

    def start_streaming(self, *hosts):
        """A group whose destinations ``hosts`` receive the stream."""
        records.start_group(self.instance, 1, 'conductor-1')
        chosen = [destination(host, prepared=True) for host in hosts]
        for dest in chosen:
            self.task.group.add(dest)
        self.task.group.stream()
        self.task.group.streaming(chosen)
        self.migrations = [d.migration for d in chosen]
        return chosen

    def test_a_source_that_cannot_stream_says_why_at_once(self):
        chosen = self.start_streaming('a', 'b')
        self.useFixture(_patch_object(self.task, '_prepare_round',
                                      return_value=chosen))
        self.compute.start_stream.side_effect = oslo_messaging.RemoteError(
            'SourceStreamFailed', 'QEMU refused: migrate busy', 'trace')
        error = self.assertRaises(exceptions.AllDestinationsFailed,
                                  self.task.execute)
        # First: the fault message keeps 255 characters.
        self.assertTrue(str(error).startswith(
            'Every destination failed (source src: QEMU refused: migrate '
            'busy; a: stream: the source could not start'), str(error))
        self.compute.wait_destination.assert_not_called()
        self.assertEqual(
            [vocabulary.MigrationStatus.FAILED] * 2,
            [d.migration.status for d in chosen])
        self.assertEqual(2, self.compute.revert_destination.call_count)
        self.compute.resume_source.assert_called_once_with(
            mock.ANY, self.instance)
        self.assertFalse(records.group_in_progress(self.instance))
        self.assertIn('QEMU refused', self.fault.call_args.kwargs[
            'fault_message'])

    def test_execute_rolls_back_what_fails_unexpectedly(self):
        chosen = self.start_streaming('a', 'b')
        self.useFixture(_patch_object(self.task, '_prepare_round',
                                      return_value=chosen))
        self.useFixture(_patch_object(self.task, '_stream_and_elect',
                                      side_effect=RuntimeError('bus down')))
        error = self.assertRaises(RuntimeError, self.task.execute)
        self.assertEqual('bus down', str(error))
        self.assertEqual(
            [vocabulary.MigrationStatus.FAILED] * 2,
            [d.migration.status for d in chosen])
        self.assertEqual(2, self.compute.revert_destination.call_count)
        self.compute.abort_stream.assert_called_once_with(
            mock.ANY, self.instance)
        self.compute.resume_source.assert_called_once_with(
            mock.ANY, self.instance)
        self.assertFalse(records.group_in_progress(self.instance))
        self.assertIn('the conductor failed: bus down',
                      self.instance.system_metadata[
                          vocabulary.SYSMETA_LAST_RESULT])
        self.fault.assert_called_once()

    def test_a_recorded_winner_is_finished_not_reverted(self):
        winner, loser = self.start_streaming('a', 'b')
        records.record_winner(self.instance, winner.migration.uuid)
        records.record_resumed(self.instance, winner.migration.uuid)
        finish = self.useFixture(_patch_object(self.task.group,
                                               'finish')).mock
        self.task.rollback(RuntimeError('lost'))
        finish.assert_called_once_with(winner, [loser])
        self.assertIn('lost', loser.reason)
        self.compute.resume_source.assert_not_called()

    def test_a_winner_that_cannot_resume_is_reverted_with_the_others(self):
        winner, loser = self.start_streaming('a', 'b')
        records.record_winner(self.instance, winner.migration.uuid)
        self.compute.resume_destination.side_effect = RuntimeError('dead')
        self.task.rollback(RuntimeError('lost'))
        self.assertEqual(
            [vocabulary.MigrationStatus.FAILED] * 2,
            [d.migration.status for d in (winner, loser)])
        self.assertIn('resume: dead', winner.reason)
        self.compute.resume_source.assert_called_once_with(
            mock.ANY, self.instance)

    def test_stopping_and_ended_groups_are_left_alone(self):
        self.start_streaming('a')
        for error in (exceptions.ConductorStopping(instance_uuid='inst'),
                      exceptions.AllDestinationsFailed(reasons='x')):
            self.task.rollback(error)
        self.compute.revert_destination.assert_not_called()
        self.assertTrue(records.group_in_progress(self.instance))

    def test_a_stopping_conductor_leaves_the_rest_to_recovery(self):
        self.start_streaming('a', 'b')
        self.task.group._stopping = lambda: True
        records.record_winner(self.instance, 'mig-a')
        self.compute.resume_destination.side_effect = RuntimeError('dead')
        self.task.rollback(RuntimeError('lost'))
        self.compute.revert_destination.assert_not_called()
        self.assertEqual('mig-a', records.winner(self.instance))

    def test_a_stopped_owner_does_not_finish_a_resumed_winner(self):
        # The next conductor's recovery finishes it: both at once race.
        winner, loser = self.start_streaming('a', 'b')
        records.record_winner(self.instance, winner.migration.uuid)
        records.record_resumed(self.instance, winner.migration.uuid)
        self.task.group._stopping = lambda: True
        self.task.rollback(RuntimeError('held call lost at restart'))
        self.clients.compute_rpcapi.post_live_migration_at_destination.\
            assert_not_called()
        self.clients.report_client.move_allocations.assert_not_called()
        self.compute.revert_destination.assert_not_called()
        self.assertTrue(records.group_in_progress(self.instance))
        self.fault.assert_not_called()


class RecoveryRecordsTest(RollbackTest):
    """Recovery never trips on the records it finds."""

    def test_hostless_migration_and_pending_claim_are_no_destinations(self):
        (real,) = self.start_streaming('a')
        hostless = mock.Mock(uuid='mig-none', dest_compute=None,
                             dest_node=None,
                             status=vocabulary.MigrationStatus.ACCEPTED)
        self.migrations.insert(0, hostless)
        records.set_pending_claim(self.instance, 'consumer')
        error = self.task.group.settle('restarted')
        self.assertIsInstance(error, exceptions.AllDestinationsFailed)
        self.compute.revert_destination.assert_called_once_with(
            mock.ANY, self.instance, real.migration)
        self.assertEqual(vocabulary.MigrationStatus.CANCELLED,
                         hostless.status)
        released = [c.args[4] for c in self.release.call_args_list]
        self.assertEqual({'consumer', 'mig-none', 'mig-a'}, set(released))
        self.assertEqual({'a', 'conductor'}, set(self.task.group.reasons))
        self.assertIsNone(records.pending_claim(self.instance))
        self.assertIsNone(self.instance.task_state)

    def test_a_destination_without_host_is_named_by_its_migration(self):
        records.start_group(self.instance, 1, 'conductor-1')
        self.task.group.reasons['b'] = 'stream: lost'
        odd = destination(None, prepared=True)
        odd.migration.uuid = 'mig-x'
        self.task.group.revert(odd, vocabulary.MigrationStatus.FAILED)
        error = self.task.group.end_failed()
        self.assertIn('migration mig-x: failed', str(error))
        self.assertIn('b: stream: lost', str(error))

    def test_scheduler_messaging_timeout_ends_the_round_cleanly(self):
        records.start_group(self.instance, 1, 'conductor-1')
        self.useFixture(_patch_object(
            self.task, '_choose',
            side_effect=exceptions.SchedulingFailed(reason='timed out')))
        self.assertEqual([], self.task._prepare_round(1))
        self.assertIn('timed out', self.task.group.reasons['scheduler'])

    def test_a_failing_group_never_stops_recovery_of_the_others(self):
        instances = [
            mock.Mock(uuid=uuid, system_metadata={
                vocabulary.SYSMETA_ACTIVE: vocabulary.SYSMETA_ACTIVE_VALUE})
            for uuid in ('one', 'two')]
        cell = mock.Mock(**{'is_cell0.return_value': False})
        self.useFixture(_patch('nova.objects.CellMappingList.get_all',
                               return_value=[cell]))
        self.useFixture(_patch('nova.context.target_cell'))
        self.useFixture(_patch(
            'nova_multidest.conductor.recovery._interrupted',
            return_value=instances))
        settled = []

        def settle(group, reason):
            settled.append(group.instance.uuid)
            if group.instance.uuid == 'one':
                raise TypeError('broken record')

        self.useFixture(_patch(
            'nova_multidest.conductor.group.Group.settle',
            side_effect=settle, autospec=True))
        recovery.recover_all(mock.Mock(), self.clients)
        self.assertEqual(['one', 'two'], settled)
        (call,) = self.fault.call_args_list
        self.assertIs(instances[0], call.args[1])
        self.assertIn('broken record', call.kwargs['fault_message'])


class OwnershipTest(RollbackTest):
    """A group has one owner; a stale one stops at its next step."""

    def test_a_stale_owner_is_fenced_at_its_next_step(self):
        records.start_group(self.instance, 1, 'conductor-1')
        self.task.group.hold()
        self.task.group.check_not_stopping()
        self.take_over_behind_our_back()
        error = self.assertRaises(exceptions.GroupFenced,
                                  self.task.group.check_not_stopping)
        self.assertIn('conductor-2 (generation 2)', str(error))
        # Fenced is a kind of stopping: the rollback touches nothing.
        self.task.rollback(error)
        self.compute.revert_destination.assert_not_called()

    def take_over_behind_our_back(self):
        stored = dict(self.instance.system_metadata)
        stored[vocabulary.SYSMETA_OWNER] = 'conductor-2'
        stored[vocabulary.SYSMETA_GENERATION] = '2'
        self.useFixture(_patch('nova.objects.Instance.get_by_uuid',
                               return_value=mock.Mock(
                                   system_metadata=stored)))

    def test_a_fenced_owner_does_not_settle(self):
        winner, loser = self.start_streaming('a', 'b')
        self.task.group.hold()
        records.record_winner(self.instance, winner.migration.uuid)
        records.record_resumed(self.instance, winner.migration.uuid)
        self.take_over_behind_our_back()
        self.task.rollback(RuntimeError('held call lost'))
        self.clients.compute_rpcapi.post_live_migration_at_destination.\
            assert_not_called()
        self.clients.report_client.move_allocations.assert_not_called()
        self.compute.revert_destination.assert_not_called()
        self.compute.resume_source.assert_not_called()
        self.fault.assert_not_called()

    def test_a_fenced_owner_does_not_finish(self):
        winner, loser = self.start_streaming('a', 'b')
        self.task.group.hold()
        self.take_over_behind_our_back()
        self.assertRaises(exceptions.GroupFenced, self.task.group.finish,
                          winner, [loser])
        self.clients.compute_rpcapi.post_live_migration_at_destination.\
            assert_not_called()
        self.clients.report_client.move_allocations.assert_not_called()

    def test_take_over_bumps_the_generation(self):
        records.start_group(self.instance, 1, 'conductor-1')
        records.take_over(mock.Mock(), self.instance, 'conductor-2')
        self.assertEqual(('conductor-2', '2'),
                         records.ownership(self.instance.system_metadata))

    def ours(self, owner, at_start=False, running=(), owner_up=False):
        meta = {}
        if owner:
            meta[vocabulary.SYSMETA_OWNER] = owner
        instance = mock.Mock(uuid='inst', system_metadata=meta)
        self.clients.servicegroup_api.service_is_up.return_value = owner_up
        self.useFixture(_patch(
            'nova.objects.Service.get_by_host_and_binary'))
        return recovery._ours_to_take(mock.Mock(), self.clients, instance,
                                      at_start, running, 'conductor-1')

    def test_recovery_takes_only_groups_it_owns_or_whose_lease_expired(self):
        self.assertTrue(self.ours(None, at_start=True))
        self.assertFalse(self.ours(None))
        self.assertTrue(self.ours('conductor-1'))
        self.assertFalse(self.ours('conductor-1', running={'inst'}))
        self.assertFalse(self.ours('conductor-2', owner_up=True))
        self.assertTrue(self.ours('conductor-2', owner_up=False))


class RequestCheckTest(TaskTestBase):
    """What nova-api should have refused ends the request at once."""

    def refused(self, **task_args):
        self.task = task_mod.LiveMigrateMultiTask(
            mock.Mock(), self.instance, self.clients, **task_args)
        start_round = self.useFixture(_patch_object(
            self.task.group, 'start_round')).mock
        error = self.assertRaises(exceptions.InvalidMigrationRequest,
                                  self.task.execute)
        start_round.assert_not_called()
        self.assertIsNone(self.instance.task_state)
        self.instance.save.assert_called_once_with(
            expected_task_state=['migrating', None])
        self.fault.assert_called_once()
        self.assertIn('"result": "failed"', self.instance.system_metadata[
            vocabulary.SYSMETA_LAST_RESULT])
        self.compute.assert_not_called()
        return str(error)

    def flavor(self, **specs):
        self.instance.flavor.name = 'm1.tiny'
        self.instance.flavor.flavorid = '42'
        self.instance.flavor.extra_specs = specs

    def test_invalid_extra_specs(self):
        for specs, args, fragment in (
                ({'multidest:destinations': 'two'}, {},
                 "multidest:destinations='two' (allowed: a whole number "
                 "from 1 to 16)"),
                ({'multidest:destinations': '17'}, {},
                 'multidest:destinations'),
                ({'multidest:topology': 'ring'}, {'count': 2},
                 "multidest:topology='ring' (allowed: star or chain)"),
                ({'multidest:destination': '2'}, {'destinations': ['a']},
                 'multidest:destination=')):
            self.instance.reset_mock()
            self.fault.reset_mock()
            self.instance.task_state = 'migrating'
            self.flavor(**specs)
            message = self.refused(**args)
            self.assertIn('Flavor m1.tiny (id 42) of server inst', message)
            self.assertIn(fragment, message)

    def test_a_flavor_count_unused_is_not_checked(self):
        self.flavor(**{'multidest:destinations': 'two'})
        self.task = task_mod.LiveMigrateMultiTask(
            mock.Mock(), self.instance, self.clients, count=2)
        self.task._check_request()

    def test_count_must_be_a_whole_number(self):
        for count in (2.0, True, 0, '2'):
            self.instance.reset_mock()
            self.fault.reset_mock()
            self.instance.task_state = 'migrating'
            self.assertIn('count must be a whole number',
                          self.refused(count=count))


class HostCheckTest(TaskTestBase):

    def test_the_checks_say_why_the_scheduler_refused_a_host(self):
        self.useFixture(_patch_object(self.task, '_new_migration'))
        revert = self.useFixture(_patch_object(self.task.group,
                                               'revert')).mock
        failed = mock.Mock()
        failed.exception.return_value = exceptions.DestinationUnusable(
            host='b', state='its compute service is disabled')
        self.task._refused_by_scheduler('b', mock.Mock(), failed)
        destination = revert.call_args.args[0]
        self.assertEqual('checks: Destination host b cannot be used: its '
                         'compute service is disabled.', destination.reason)
        self.task._refused_by_scheduler('c', mock.Mock(), None)
        self.assertIn('claim: no valid host',
                      revert.call_args.args[0].reason)
        self.task._refused_by_scheduler(
            'd', mock.Mock(), None, oslo_messaging.MessagingTimeout('late'))
        self.assertEqual('claim: the scheduler call failed: late',
                         revert.call_args.args[0].reason)

    def test_host_states(self):
        task = task_mod.LiveMigrateMultiTask(
            mock.Mock(), self.instance, self.clients)
        service = mock.Mock(forced_down=False, disabled=False)
        self.useFixture(_patch('nova.objects.Service.get_by_compute_host',
                               return_value=service))
        self.clients.servicegroup_api.service_is_up.return_value = True
        task._check_host_usable('b')
        for changes, state in (({'forced_down': True}, 'forced down'),
                               ({'disabled': True}, 'disabled'),
                               ({}, 'down')):
            service.configure_mock(**dict(
                {'forced_down': False, 'disabled': False}, **changes))
            self.clients.servicegroup_api.service_is_up.return_value = (
                bool(changes))
            error = self.assertRaises(exceptions.DestinationUnusable,
                                      task._check_host_usable, 'b')
            self.assertIn('its compute service is %s' % state, str(error))


def _patch(target, **kwargs):
    return fixtures.MockPatch(target, **kwargs)


def _patch_object(obj, name, **kwargs):
    return fixtures.MockPatchObject(obj, name, **kwargs)
