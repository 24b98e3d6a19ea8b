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

"""The multi-destination live migration task.

Flow (DESIGN.md, steps 2 to 7): choose the destinations; prepare them
concurrently, each one reverted alone if it fails; start the one stream on
the source; elect the first destination that completes, record it durably,
then let it resume; do Nova's post-live-migration bookkeeping for it;
revert the others. If every destination fails, the source resumes and the
server stays ACTIVE there, possibly after further rounds on other hosts.

Each step leaves Nova's records (Migration rows, instance
system_metadata) telling the truth, so that ``recovery`` can finish or
roll back a group whose conductor died.
"""

import concurrent.futures
import dataclasses
import os
import queue
import time
import typing

from oslo_log import log as logging

from nova import availability_zones
from nova.compute import power_state
from nova.compute import task_states
from nova.compute import utils as compute_utils
from nova import exception as nova_exception
from nova import objects
from nova.objects import fields as obj_fields

from nova_multidest.conductor import destinations as dest_mod
from nova_multidest.conductor import records
from nova_multidest.conductor import resources
from nova_multidest import conf
from nova_multidest import exceptions
from nova_multidest import vocabulary

LOG = logging.getLogger(__name__)
CONF = conf.CONF

# Extra seconds a wait_destination call may take beyond the stream limits.
_WAIT_GRACE = 60
# How often the election loop looks whether its conductor is stopping.
_REPORT_POLL = 1.0


class _PhaseTimer(object):
    """Seconds spent per phase, for the debug log."""

    def __init__(self, phase=vocabulary.DestinationPhase.CHECKS):
        self.phase = phase
        self.start = time.monotonic()
        self.spent = []

    def next(self, phase):
        now = time.monotonic()
        self.spent.append((self.phase, now - self.start))
        self.phase, self.start = phase, now
        return phase

    def __str__(self):
        return ', '.join('%s %.2fs' % item for item in self.spent)


@dataclasses.dataclass
class Destination:
    """One destination host of the group and what it holds."""

    host: str
    migration: typing.Any
    node: typing.Optional[str] = None
    prepare_sent: bool = False
    migrate_data: typing.Any = None
    agent_address: typing.Any = None
    attachment_ids: dict = dataclasses.field(default_factory=dict)
    reason: typing.Optional[str] = None

    def fail(self, phase, error):
        self.reason = '%s: %s' % (phase, error)


def block_migration_flag(block_migration):
    """The API's 'auto' means: let the driver decide, as Nova does."""
    if block_migration in ('auto', None):
        return None
    return bool(block_migration)


class LiveMigrateMultiTask(object):

    def __init__(self, context, instance, clients, destinations=None,
                 count=None, block_migration='auto', warm_up=False,
                 stopping=None):
        self.context = context
        self.instance = instance
        self.clients = clients
        self.requested_hosts = destinations
        self.count = count
        self.block_migration = block_migration_flag(block_migration)
        self.warm_up = warm_up
        self._stopping = stopping
        self.source = instance.host
        self.source_node = instance.node
        self.tried_hosts = set()
        self.losers = []
        self.reasons = {}
        self._spec = None

    # -- entry point ------------------------------------------------------

    def execute(self):
        with compute_utils.EventReporter(
                self.context, vocabulary.EVENT_LIVE_MIGRATION, CONF.host,
                self.instance.uuid, graceful_exit=True):
            self._execute()

    def _execute(self):
        rounds = CONF.multidest.max_rounds
        for round_number in range(1, rounds + 1):
            records.start_group(self.instance, round_number)
            timer = _PhaseTimer('prepare')
            ready = self._prepare_round(round_number)
            if len(ready) >= CONF.multidest.min_destinations:
                timer.next('stream and election')
                winner = self._stream_and_elect(ready)
                if winner is not None:
                    timer.next('finish')
                    self.finish(winner)
                    timer.next(None)
                    LOG.debug('Group timings: %s', timer,
                              instance=self.instance)
                    return
            else:
                error = exceptions.NotEnoughDestinations(
                    ready=len(ready),
                    minimum=CONF.multidest.min_destinations)
                LOG.warning('Round %d: %s', round_number, error,
                            instance=self.instance)
                self.reasons['round %d' % round_number] = (
                    'too few destinations ready')
                self.revert_all(ready, vocabulary.MigrationStatus.CANCELLED,
                                'too few destinations ready')
            self.resume_source()
        self.all_failed()

    # -- helpers shared with recovery -----------------------------------------

    def check_not_stopping(self):
        """Leave everything to recovery if our service is stopping.

        Simulates and handles a conductor crash alike: no cleanup, the
        records already tell the next conductor what to do.
        """
        if self._stopping is not None and self._stopping():
            raise exceptions.ConductorStopping(
                instance_uuid=self.instance.uuid)

    def _record_destination_event(self, destination, error=None):
        name = vocabulary.EVENT_DESTINATION % destination.host
        try:
            objects.InstanceActionEvent.event_start(
                self.context, self.instance.uuid, name, want_result=False,
                host=destination.host)
            # Nova marks an event failed only when it has a traceback; the
            # reason is all there is to show.
            objects.InstanceActionEvent.event_finish_with_failure(
                self.context, self.instance.uuid, name, exc_val=error,
                exc_tb=None if error is None else str(error),
                want_result=False)
        except nova_exception.InstanceActionNotFound:
            LOG.debug('No instance action to record %s in', name,
                      instance=self.instance)

    # -- choosing destinations ---------------------------------------------

    def _topology(self):
        return vocabulary.flavor_topology(self.instance.flavor.extra_specs,
                                          CONF.multidest.topology)

    def _request_spec(self):
        if self._spec is None:
            self._spec = dest_mod.build_request_spec(
                self.context, self.instance, self.clients.network_api)
        return self._spec

    def _wanted_count(self):
        if self.requested_hosts:
            return len(self.requested_hosts)
        if self.count:
            return min(self.count, CONF.multidest.max_destinations)
        return vocabulary.flavor_destination_count(
            self.instance.flavor.extra_specs,
            CONF.multidest.default_destinations,
            CONF.multidest.max_destinations)

    def _new_migration(self, host=None, node=None, migration_uuid=None):
        migration = objects.Migration(
            context=self.context,
            uuid=migration_uuid or dest_mod.new_migration_uuid(),
            instance_uuid=self.instance.uuid,
            migration_type=obj_fields.MigrationType.LIVE_MIGRATION,
            source_compute=self.source, source_node=self.source_node,
            dest_compute=host, status=vocabulary.MigrationStatus.ACCEPTED,
            old_instance_type_id=self.instance.flavor.id,
            new_instance_type_id=self.instance.flavor.id,
            user_id=self.context.user_id,
            project_id=self.context.project_id)
        if node:
            migration.dest_node = node
            migration.dest_compute_id = self._compute_node_id(host, node)
        migration.create()
        return migration

    def _compute_node_id(self, host, node):
        return objects.ComputeNode.get_by_host_and_nodename(
            self.context, host, node).id

    def _set_dest_node(self, migration, host, node):
        migration.dest_compute = host
        migration.dest_node = node
        migration.dest_compute_id = self._compute_node_id(host, node)
        migration.save()

    def _choose(self, round_number):
        """Destinations of this round, each with its Migration record.

        Named hosts go through the scheduler too, in one call that ignores
        every other host: its filters and placement claim each of them,
        and a named host it refuses fails alone, at the claim phase.
        """
        if self.requested_hosts and round_number == 1:
            hosts = dest_mod.check_explicit(self.instance,
                                            self.requested_hosts)
            others = dest_mod.other_hosts(self.context, self.instance, hosts)
            chosen = self._schedule(len(hosts), self.tried_hosts | others)
            found = {d.host for d in chosen}
            for host in hosts:
                if host not in found:
                    self._refused_by_scheduler(host)
        else:
            chosen = self._schedule(self._wanted_count(), self.tried_hosts)
        self.tried_hosts.update(d.host for d in chosen)
        return chosen

    def _refused_by_scheduler(self, host):
        destination = Destination(host, self._new_migration(host))
        destination.fail(vocabulary.DestinationPhase.CLAIM,
                         'no valid host: the scheduler filters or placement '
                         'refused it')
        self._revert(destination, vocabulary.MigrationStatus.FAILED)
        self.tried_hosts.add(host)

    def _schedule(self, wanted, exclude):
        # The record exists before the claim: a crash in between leaves a
        # Migration that recovery finds, never an orphaned allocation.
        pending = {}

        def create(host, node, migration_uuid):
            migration = self._new_migration(host, node, migration_uuid)
            pending[migration_uuid] = migration

        candidates = dest_mod.schedule(
            self.context, self.clients.query_client,
            self.clients.report_client, self._request_spec(), self.instance,
            wanted, exclude=exclude, before_claim=create)
        chosen = []
        for candidate in candidates:
            migration = pending.pop(candidate.migration_uuid)
            if migration.dest_compute != candidate.host:
                self._set_dest_node(migration, candidate.host,
                                    candidate.node)
            chosen.append(Destination(candidate.host, migration,
                                      node=candidate.node))
        for migration in pending.values():
            records.set_status(migration, vocabulary.MigrationStatus.FAILED)
        return chosen

    # -- preparing destinations ---------------------------------------------

    def _prepare_round(self, round_number):
        """Choose and prepare this round's destinations, all at once.

        Each destination runs on a thread of its own, so preparing N takes
        about as long as the slowest. Named hosts are checked while the
        scheduler claims them.
        """
        named = []
        if self.requested_hosts and round_number == 1:
            named = self.requested_hosts
        workers = 2 * CONF.multidest.max_destinations
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            checks = {host: pool.submit(self._run_checks, host)
                      for host in named}
            try:
                chosen = self._choose(round_number)
            except (exceptions.MultiDestError,
                    nova_exception.NovaException) as error:
                LOG.warning('Could not choose destinations: %s', error,
                            instance=self.instance)
                self.reasons['scheduler'] = str(error)
                return []
            self.secret = os.urandom(32)
            futures = [pool.submit(self._prepare_one, d, checks.get(d.host))
                       for d in chosen]
            results = [future.result() for future in futures]
        self.check_not_stopping()
        return [d for d, ok in zip(chosen, results) if ok]

    def _run_checks(self, host):
        """Nova's live-migration checks of one destination host."""
        self.check_not_stopping()
        self._check_host_up(host)
        self._check_same_cell(host)
        self._check_hypervisor(host)
        return self.clients.compute_rpcapi.check_can_live_migrate_destination(
            self.context, self.instance, host, self.block_migration, None,
            None, None)

    def _prepare_one(self, destination, checks=None):
        phase = vocabulary.DestinationPhase.CHECKS
        timings = _PhaseTimer()
        try:
            self.check_not_stopping()
            records.set_status(destination.migration,
                               vocabulary.MigrationStatus.PREPARING)
            if checks is None:
                migrate_data = self._run_checks(destination.host)
            else:
                migrate_data = checks.result()
            phase = timings.next(vocabulary.DestinationPhase.BINDING)
            resources.bind_ports(self.context, self.clients.network_api,
                                 self.instance, destination.host,
                                 migrate_data)
            phase = timings.next(vocabulary.DestinationPhase.PREPARE)
            self.check_not_stopping()
            destination.prepare_sent = True
            result = self.clients.multidest_compute.prepare_destination(
                self.context, self.instance, destination.migration,
                self.secret, self.block_migration, migrate_data)
            destination.agent_address = result['agent_address']
            destination.migrate_data = (result.get('migrate_data') or
                                        migrate_data)
            destination.attachment_ids = result.get('attachment_ids') or {}
            timings.next(None)
            LOG.debug('Destination %s prepared (%s)', destination.host,
                      timings, instance=self.instance)
            return True
        except exceptions.ConductorStopping:
            return False
        except Exception as error:
            self.check_not_stopping()
            LOG.warning('Destination %s failed at %s: %s', destination.host,
                        phase, error, instance=self.instance)
            destination.fail(phase, error)
            self._revert(destination, vocabulary.MigrationStatus.FAILED)
            return False

    def _check_host_up(self, host):
        service = objects.Service.get_by_compute_host(self.context, host)
        if not self.clients.servicegroup_api.service_is_up(service):
            raise nova_exception.ComputeServiceUnavailable(host=host)

    def _check_same_cell(self, host):
        source_cell = dest_mod.instance_cell(self.context, self.instance)
        dest_cell = objects.HostMapping.get_by_host(
            self.context, host).cell_mapping
        if source_cell.uuid != dest_cell.uuid:
            raise nova_exception.MigrationPreCheckError(
                reason='host %s is in another cell' % host)

    def _check_hypervisor(self, host):
        get = objects.ComputeNode.get_first_node_by_host_for_old_compat
        source = get(self.context, self.source)
        dest = get(self.context, host)
        if source.hypervisor_type != dest.hypervisor_type:
            raise nova_exception.InvalidHypervisorType()
        if (not CONF.workarounds.skip_hypervisor_version_check_on_lm and
                source.hypervisor_version > dest.hypervisor_version):
            raise nova_exception.DestinationHypervisorTooOld()

    # -- stream and election -------------------------------------------------

    def _stream_and_elect(self, ready):
        records.set_phase(self.instance, vocabulary.GroupPhase.STREAMING)
        for destination in ready:
            records.set_status(destination.migration,
                               vocabulary.MigrationStatus.RUNNING)
        self.check_not_stopping()
        self.clients.multidest_compute.start_stream(
            self.context, self.instance,
            [{'migration_uuid': d.migration.uuid, 'host': d.host,
              'agent_address': d.agent_address} for d in ready],
            self.secret, self._topology(), self.warm_up)
        timeout = (CONF.multidest.completion_timeout +
                   CONF.multidest.election_timeout)
        reports = queue.Queue()
        pool = concurrent.futures.ThreadPoolExecutor(len(ready))
        for destination in ready:
            pool.submit(self._wait_one, destination, timeout, reports)
        pool.shutdown(wait=False)
        waiting = list(ready)
        deadline = time.monotonic() + timeout + _WAIT_GRACE
        while waiting:
            try:
                destination, outcome = reports.get(timeout=_REPORT_POLL)
            except queue.Empty:
                self.check_not_stopping()
                if time.monotonic() > deadline:
                    self.revert_all(waiting, vocabulary.MigrationStatus.FAILED,
                                    'no report within %d s' % timeout)
                    return None
                continue
            waiting.remove(destination)
            self.check_not_stopping()
            completed = outcome == vocabulary.WaitOutcome.COMPLETED
            if completed and self._elect(destination):
                self.losers = waiting
                return destination
            if not completed:
                destination.fail(vocabulary.DestinationPhase.STREAM, outcome)
                self._revert(destination, vocabulary.MigrationStatus.FAILED)
        return None

    def _wait_one(self, destination, timeout, reports):
        try:
            outcome = self.clients.multidest_compute.wait_destination(
                self.context, self.instance, destination.migration, timeout)
        except Exception as error:
            outcome = 'wait failed: %s' % error
        reports.put((destination, outcome))

    def _elect(self, destination):
        """Record ``destination`` as the winner, then let it resume.

        The record comes first: if we die between the two, recovery knows
        which copy may run. A destination that fails to resume never ran
        (the compute's contract), so the next completed one may win.
        """
        records.record_winner(self.instance, destination.migration.uuid,
                              destination.attachment_ids)
        try:
            self.clients.multidest_compute.resume_destination(
                self.context, self.instance, destination.migration)
        except Exception as error:
            self.check_not_stopping()
            LOG.warning('Elected destination %s failed to resume: %s',
                        destination.host, error, instance=self.instance)
            destination.fail(vocabulary.DestinationPhase.RESUME, error)
            self._revert(destination, vocabulary.MigrationStatus.FAILED)
            records.clear_winner(self.instance)
            return False
        records.record_resumed(self.instance, destination.migration.uuid)
        LOG.info('Elected %s', destination.host, instance=self.instance)
        return True

    # -- reverting ----------------------------------------------------------

    def _revert(self, destination, status):
        """Undo one destination without touching any other."""
        if destination.prepare_sent:
            try:
                self.clients.multidest_compute.revert_destination(
                    self.context, self.instance, destination.migration)
            except Exception:
                LOG.exception('Could not revert destination %s',
                              destination.host, instance=self.instance)
        resources.release(self.context, self.clients, self.instance,
                          destination.host, destination.migration.uuid,
                          destination.attachment_ids)
        records.set_status(destination.migration, status)
        reason = destination.reason or status
        self.reasons[destination.host] = reason
        self._record_destination_event(
            destination,
            None if status == vocabulary.MigrationStatus.COMPLETED else
            exceptions.DestinationFailed(destination=destination.host,
                                         reason=reason))

    def revert_all(self, group, status, reason):
        if not group:
            return
        for destination in group:
            destination.reason = destination.reason or reason
        with concurrent.futures.ThreadPoolExecutor(len(group)) as pool:
            list(pool.map(lambda d: self._revert(d, status), group))

    def resume_source(self):
        try:
            self.clients.multidest_compute.resume_source(
                self.context, self.instance)
        except Exception:
            LOG.exception('Could not resume the source',
                          instance=self.instance)

    # -- endings ------------------------------------------------------------

    def finish(self, winner):
        """Nova's post-live-migration bookkeeping, for the winner.

        The losers are reverted, the winner's port bindings activated and
        its claim made the instance's allocation while the source is
        cleaned up: only what Nova's post_live_migration_at_destination
        needs waits, so the server is ACTIVE on the winner sooner.
        """
        context, instance = self.context, self.instance
        self._reclaim_task_state()
        compute_utils.notify_about_instance_action(
            context, instance, CONF.host,
            action=obj_fields.NotificationAction.LIVE_MIGRATION_POST,
            phase=obj_fields.NotificationPhase.START)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            side_work = [
                pool.submit(self.revert_all, self.losers,
                            vocabulary.MigrationStatus.CANCELLED,
                            'another destination won'),
                pool.submit(self.clients.report_client.move_allocations,
                            context, winner.migration.uuid, instance.uuid)]
            bindings = pool.submit(
                self.clients.network_api.migrate_instance_start, context,
                instance, objects.Migration(source_compute=self.source,
                                            dest_compute=winner.host))
            if winner.attachment_ids:
                # The source disconnects the volumes its BDMs name: it must
                # be done before they name the winner's attachments.
                self._cleanup_source(winner)
                resources.adopt_attachments(
                    context, self.clients.volume_api, instance,
                    winner.attachment_ids)
            else:
                side_work.append(pool.submit(self._cleanup_source, winner))
            bindings.result()
            self.clients.compute_rpcapi.post_live_migration_at_destination(
                context, instance, self.block_migration, winner.host)
            for future in side_work:
                future.result()
        instance.refresh()
        self.end_completed(winner)
        compute_utils.notify_about_instance_action(
            context, instance, CONF.host,
            action=obj_fields.NotificationAction.LIVE_MIGRATION_POST,
            phase=obj_fields.NotificationPhase.END)

    def _reclaim_task_state(self):
        """Put back the task_state a restarted source compute reset.

        Nova's init_host resets a migrating instance's task_state (and errs
        one running migration) on its host; the group still owns the
        server, and Nova's post-live-migration expects MIGRATING.
        """
        self.instance.refresh()
        if self.instance.task_state != task_states.MIGRATING:
            LOG.warning('task_state was reset to %s meanwhile; setting it '
                        'back to finish the migration',
                        self.instance.task_state, instance=self.instance)
            self.instance.task_state = task_states.MIGRATING
            self.instance.save()

    def _cleanup_source(self, winner):
        self.clients.multidest_compute.cleanup_source(
            self.context, self.instance, winner.migration,
            migrate_data=winner.migrate_data)

    def end_completed(self, winner):
        records.set_status(winner.migration,
                           vocabulary.MigrationStatus.COMPLETED)
        self._record_destination_event(winner)
        self.clients.network_api.cleanup_instance_network_on_host(
            self.context, self.instance, self.source)
        resources.sweep_attachments(self.context, self.clients.volume_api,
                                    self.instance)
        records.end_group(self.instance,
                          vocabulary.MigrationStatus.COMPLETED, winner.host)
        self.instance.availability_zone = (
            availability_zones.get_host_availability_zone(
                self.context, winner.host))
        if self.instance.task_state == task_states.MIGRATING:
            self.instance.task_state = None
        self.instance.save()
        LOG.info('Live migration to %s completed', winner.host,
                 instance=self.instance)

    def all_failed(self):
        """The server stays where it was, ACTIVE, and says why."""
        instance = self.instance
        resources.sweep_attachments(self.context, self.clients.volume_api,
                                    instance)
        error = exceptions.AllDestinationsFailed(
            reasons='; '.join('%s: %s' % item
                              for item in sorted(self.reasons.items())) or
            'no destination found')
        compute_utils.add_instance_fault_from_exc(
            self.context, instance, error, fault_message=str(error))
        records.end_group(instance, vocabulary.MigrationStatus.FAILED,
                          self.source, reasons=self.reasons)
        instance.task_state = None
        instance.power_state = power_state.RUNNING
        instance.save(expected_task_state=[task_states.MIGRATING, None])
        compute_utils.notify_about_instance_action(
            self.context, instance, CONF.host,
            action=obj_fields.NotificationAction.LIVE_MIGRATION_ROLLBACK,
            phase=obj_fields.NotificationPhase.END)
        LOG.warning('Every destination failed; the server stays on %s',
                    self.source, instance=instance)
        raise error
