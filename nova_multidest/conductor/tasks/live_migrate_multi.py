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

Nova's conductor tasks pattern (``nova.conductor.tasks.base.TaskBase``):
``execute`` runs ``_execute`` and calls ``rollback`` if it raises. One
round chooses the destinations, prepares them concurrently (each one
reverted alone if it fails), starts the one stream on the source and
elects the first destination that completes; the group (``group.py``)
records each step and owns every end: finishing the winner, reverting the
others, and keeping the server on its source when every destination of
every round failed. ``rollback`` brings an unexpected failure to one of
those ends from Nova's records, as recovery does after a restart.
"""

import concurrent.futures
import os
import queue
import time

from oslo_log import log as logging
import oslo_messaging as messaging

from nova.conductor.tasks import base
from nova import exception as nova_exception
from nova import objects
from nova.objects import fields as obj_fields

from nova_multidest.compute import rpcapi
from nova_multidest.conductor import destinations as dest_mod
from nova_multidest.conductor import group as group_mod
from nova_multidest.conductor import notifications
from nova_multidest.conductor import records
from nova_multidest.conductor import recovery
from nova_multidest.conductor import resources
from nova_multidest import conf
from nova_multidest import exceptions
from nova_multidest import migration_limits
from nova_multidest import vocabulary

LOG = logging.getLogger(__name__)
CONF = conf.CONF

# Extra seconds a wait_destination call may take beyond the stream limits.
_WAIT_GRACE = 60
# How often the election loop looks whether its conductor is stopping.
_REPORT_POLL = 1.0
# A round whose prepared destinations are fewer than min_destinations.
_TOO_FEW = 'too few destinations ready'


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


def remote_reason(error):
    """The message of an error a remote service raised, without its trace."""
    if isinstance(error, messaging.RemoteError):
        return error.value
    text = error.args[0] if error.args else str(error)
    return str(text).split('\n', 1)[0]


def block_migration_flag(block_migration):
    """The API's 'auto' means: let the driver decide, as Nova does."""
    if block_migration in ('auto', None):
        return None
    return bool(block_migration)


class LiveMigrateMultiTask(base.TaskBase):
    """Live-migrate ``instance`` to several destinations at once.

    ``destinations`` names the hosts of the first round, else ``count``
    (else the flavor's, else the configured default) hosts come from the
    scheduler. ``stopping()`` tells that the service stops.
    """

    def __init__(self, context, instance, clients, destinations=None,
                 count=None, block_migration='auto', warm_up=False,
                 stopping=None, owner=None):
        super().__init__(context, instance)
        self.clients = clients
        self.requested_hosts = destinations
        self.count = count
        self.block_migration = block_migration_flag(block_migration)
        self.warm_up = warm_up
        self.group = group_mod.Group(
            context, instance, clients, source=instance.host,
            source_node=instance.node,
            block_migration=self.block_migration, stopping=stopping,
            owner=owner)
        self.tried_hosts = set()
        self.secret = None
        self._spec = None
        self._source_disks_error = None

    def _execute(self):
        self._check_request()
        for round_number in range(1, CONF.multidest.max_rounds + 1):
            self.group.start_round(round_number)
            notifications.start(self.context, self.group, self.requested_hosts)
            timer = _PhaseTimer('prepare')
            ready = self._prepare_round(round_number)
            if len(ready) < CONF.multidest.min_destinations:
                LOG.warning('Round %d: only %d destination(s) could be '
                            'prepared, fewer than [multidest] '
                            'min_destinations (%d)', round_number,
                            len(ready), CONF.multidest.min_destinations,
                            instance=self.instance)
                self.group.reasons['round %d' % round_number] = _TOO_FEW
                self.group.give_up(ready,
                                   vocabulary.MigrationStatus.CANCELLED,
                                   _TOO_FEW)
                continue
            timer.next('stream and election')
            winner, losers = self._stream_and_elect(ready)
            if winner is None:
                self.group.give_up(losers, vocabulary.MigrationStatus.FAILED,
                                   'the election ended without a winner')
                continue
            timer.next('finish')
            self.group.finish(winner, losers)
            timer.next(None)
            LOG.debug('Group timings: %s', timer, instance=self.instance)
            return
        raise self.group.end_failed()

    def rollback(self, ex):
        """End the group from its records after an unexpected failure.

        A stopping conductor leaves its groups to the next one's recovery,
        and a group whose every destination failed has already ended.
        Never raises: what cannot be settled now is left to recovery
        (periodic, and at every start). A stopping or fenced owner settles
        nothing: the next owner does.
        """
        if isinstance(ex, (exceptions.ConductorStopping,
                           exceptions.AllDestinationsFailed,
                           exceptions.InvalidMigrationRequest)):
            return
        try:
            self.group.settle('the conductor failed: %s' % ex)
        except exceptions.ConductorStopping as error:
            LOG.info('The rollback stops here: %s', error,
                     instance=self.instance)
        except Exception as error:
            LOG.exception('Could not end the multi-destination migration; '
                          'the periodic recovery of this conductor retries it',
                          instance=self.instance)
            recovery.record_fault(self.context, self.instance, error)

    def _check_request(self):
        """Refuse, before anything changes, what nova-api should have.

        Flavor extra specs set before their validator existed, or with a
        microversion older than 2.86, reach here unchecked, and so do the
        arguments of other RPC callers. The group then ends at once and
        says why.
        """
        count = self.count
        if count is not None and (isinstance(count, bool) or
                                  not isinstance(count, int) or count < 1):
            raise self.group.refuse(exceptions.InvalidMigrationRequest(
                reason='count must be a whole number of at least 1, not '
                       '%r.' % (count,)))
        flavor = self.instance.flavor
        problems = vocabulary.invalid_extra_specs(
            flavor.extra_specs,
            default_count_used=not (self.requested_hosts or count))
        if problems:
            key, value, allowed = problems[0]
            raise self.group.refuse(exceptions.InvalidFlavorExtraSpec(
                flavor_name=flavor.name, flavor_id=flavor.flavorid,
                instance_uuid=self.instance.uuid, key=key,
                value=repr(value[:40]), allowed=allowed))

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
            source_compute=self.group.source,
            source_node=self.group.source_node,
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

    def _choose(self, round_number):
        """This round's destinations from the scheduler, each claimed."""
        chosen = self._schedule(self._wanted_count(), self.tried_hosts)
        self.tried_hosts.update(d.host for d in chosen)
        return chosen

    def _claim_named(self, host, checks=None):
        """Claim one named host through the scheduler; None if refused.

        Its Migration record, the claim's consumer, is written with its
        host before the call: a crash during the call leaves a record
        recovery finds. A host the scheduler refuses fails alone, at the
        claim phase.
        """
        self.group.check_not_stopping()
        migration = self._new_migration(host)
        try:
            selection = dest_mod.claim_host(
                self.context, self.clients.query_client,
                self.clients.report_client, self._request_spec(),
                self.instance, host, migration.uuid)
        except exceptions.ConductorStopping:
            raise
        except Exception as error:
            self.group.check_not_stopping()
            self._refused_by_scheduler(host, migration, checks, error)
            return None
        try:
            self.group.check_not_stopping()
        except exceptions.ConductorStopping:
            # The next conductor's recovery may have released this
            # Migration's claims while the call was in flight: the claim
            # the call made is this thread's to drop.
            dest_mod.drop_claim(self.context, self.clients.report_client,
                                migration.uuid)
            raise
        if selection.nodename:
            migration.dest_node = selection.nodename
            migration.dest_compute_id = self._compute_node_id(
                host, selection.nodename)
            migration.save()
        destination = group_mod.Destination(host, migration,
                                            node=selection.nodename)
        self.group.add(destination)
        return destination

    def _refused_by_scheduler(self, host, migration, checks=None,
                              error=None):
        """Fail a named host the scheduler refused, saying why if known.

        The host's own checks, run meanwhile, usually tell (its service is
        down, disabled...) where the scheduler only says "no valid host".
        """
        destination = group_mod.Destination(host, migration)
        failed_check = checks.exception() if checks is not None else None
        if failed_check is not None:
            destination.fail(vocabulary.DestinationPhase.CHECKS,
                             failed_check)
        elif error is None or isinstance(error, nova_exception.NoValidHost):
            destination.fail(vocabulary.DestinationPhase.CLAIM,
                             'no valid host: the scheduler filters or '
                             'placement refused it')
        else:
            destination.fail(vocabulary.DestinationPhase.CLAIM,
                             'the scheduler call failed: %s'
                             % remote_reason(error))
        self.group.revert(destination, vocabulary.MigrationStatus.FAILED)

    def _schedule(self, wanted, exclude):
        # Each claim's consumer is recorded before the claim (a Migration
        # once its host is known, the group's pending claim key before):
        # a crash in between leaves records that recovery finds, never an
        # orphaned allocation.
        pending = {}

        def create(host, node, migration_uuid):
            self.group.check_not_stopping()
            migration = self._new_migration(host, node, migration_uuid)
            pending[migration_uuid] = migration

        def pending_claim(consumer_uuid):
            self.group.check_not_stopping()
            with self.group.owned():
                records.set_pending_claim(self.instance, consumer_uuid)

        try:
            candidates = dest_mod.schedule(
                self.context, self.clients.query_client,
                self.clients.report_client, self._request_spec(),
                self.instance, wanted, exclude=exclude, before_claim=create,
                pending_claim=pending_claim)
        except exceptions.ConductorStopping:
            raise
        except Exception:
            self._drop_pending(pending.values())
            raise
        chosen = []
        for candidate in candidates:
            migration = pending.pop(candidate.migration_uuid)
            destination = group_mod.Destination(candidate.host, migration,
                                                node=candidate.node)
            self.group.add(destination)
            chosen.append(destination)
        self._drop_pending(pending.values())
        return chosen

    def _drop_pending(self, migrations):
        """Fail the Migrations whose claim did not happen or was lost."""
        for migration in migrations:
            resources.release(self.context, self.clients, self.instance,
                              None, migration.uuid, None)
            records.set_status(migration, vocabulary.MigrationStatus.FAILED)

    # -- preparing destinations ---------------------------------------------

    def _prepare_round(self, round_number):
        """Choose and prepare this round's destinations, all at once.

        Each destination runs on a thread of its own, so preparing N takes
        about as long as the slowest. A named host is checked while the
        scheduler claims it (one scheduler call per named host, all at
        once), and is prepared as soon as its own claim and checks are
        done, whatever the other hosts' calls still do.
        """
        named = []
        if self.requested_hosts and round_number == 1:
            named = self.requested_hosts
        self.secret = os.urandom(32)
        workers = 2 * CONF.multidest.max_destinations
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            try:
                if named:
                    named = dest_mod.check_explicit(self.instance, named)
                    # Built once, before the threads share it.
                    self._request_spec()
                else:
                    chosen = self._choose(round_number)
            except exceptions.ConductorStopping:
                raise
            except Exception as error:
                # Nova's errors, and any other the scheduler call raises
                # (oslo.messaging's MessagingTimeout): no destination.
                LOG.warning('Could not choose destinations: %s', error,
                            instance=self.instance)
                self.group.reasons['scheduler'] = str(error)
                return []
            if named:
                self.tried_hosts.update(named)
                checks = {host: pool.submit(self._run_checks, host)
                          for host in named}
                futures = [pool.submit(self._claim_and_prepare, host,
                                       checks[host])
                           for host in named]
            else:
                futures = [pool.submit(self._prepare_chosen, d)
                           for d in chosen]
            results = [future.result() for future in futures]
        self.group.check_not_stopping()
        return [d for d in results if d is not None]

    def _claim_and_prepare(self, host, checks):
        destination = self._claim_named(host, checks)
        if destination is None:
            return None
        return self._prepare_chosen(destination, checks)

    def _prepare_chosen(self, destination, checks=None):
        if self._prepare_one(destination, checks):
            return destination
        return None

    def _run_checks(self, host):
        """Nova's live-migration checks of one destination host."""
        self.group.check_not_stopping()
        self._check_host_usable(host)
        self._check_same_cell(host)
        self._check_hypervisor(host)
        return self.clients.compute_rpcapi.check_can_live_migrate_destination(
            self.context, self.instance, host, self.block_migration, None,
            None, None)

    def _prepare_one(self, destination, checks=None):
        phase = vocabulary.DestinationPhase.CHECKS
        timings = _PhaseTimer()
        try:
            self.group.check_not_stopping()
            records.set_status(destination.migration,
                               vocabulary.MigrationStatus.PREPARING)
            if checks is None:
                migrate_data = self._run_checks(destination.host)
            else:
                migrate_data = checks.result()
            self._check_disk_copy(destination.host, migrate_data)
            phase = timings.next(vocabulary.DestinationPhase.BINDING)
            self.group.check_not_stopping()
            resources.bind_ports(self.context, self.clients.network_api,
                                 self.instance, destination.host,
                                 migrate_data)
            phase = timings.next(vocabulary.DestinationPhase.PREPARE)
            self.group.check_not_stopping()
            destination.prepare_sent = True
            result = self.clients.multidest_compute.prepare_destination(
                self.context, self.instance, destination.migration,
                self.secret, self.block_migration, migrate_data)
            destination.agent_address = result['agent_address']
            destination.disk_agent_address = result.get('disk_agent_address')
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
            self.group.check_not_stopping()
            LOG.warning('Destination %s failed at %s: %s', destination.host,
                        phase, error, instance=self.instance)
            destination.fail(phase, error)
            self.group.revert(destination, vocabulary.MigrationStatus.FAILED)
            return False

    def _check_disk_copy(self, host, migrate_data):
        """Refuse a block migration the hosts cannot do, before binding.

        Every host of a block migration must serve the compute RPC version
        that copies disks (its compute node's stats say which), and the
        source must be able to mirror every disk it would copy; the
        source's answer is asked once per task.
        """
        if not (migrate_data.obj_attr_is_set('block_migration') and
                migrate_data.block_migration is True):
            return
        for role, name in (('the source', self.group.source),
                           ('destination', host)):
            version = rpcapi.host_version(self.context, name)
            if (rpcapi.version_tuple(version) <
                    rpcapi.version_tuple(rpcapi.DISKS_VERSION)):
                raise exceptions.HostTooOld(
                    host=name, version=version, needed=rpcapi.DISKS_VERSION,
                    purpose='copying local disks (%s of this migration)'
                            % role)
        if self._source_disks_error is None:
            self._source_disks_error = (
                self.clients.multidest_compute.check_source_disks(
                    self.context, self.instance) or '')
        if self._source_disks_error:
            raise exceptions.InvalidMigrationRequest(
                reason=self._source_disks_error)

    def _check_host_usable(self, host):
        """Its compute service runs and may take servers, as of now."""
        service = objects.Service.get_by_compute_host(self.context, host)
        if service.forced_down:
            state = 'its compute service is forced down'
        elif service.disabled:
            state = 'its compute service is disabled'
        elif not self.clients.servicegroup_api.service_is_up(service):
            state = 'its compute service is down'
        else:
            return
        raise exceptions.DestinationUnusable(host=host, state=state)

    def _check_same_cell(self, host):
        source_cell = dest_mod.instance_cell(self.context, self.instance)
        dest_cell = objects.HostMapping.get_by_host(
            self.context, host).cell_mapping
        if source_cell.uuid != dest_cell.uuid:
            raise nova_exception.MigrationPreCheckError(
                reason='host %s is in another cell' % host)

    def _check_hypervisor(self, host):
        get = objects.ComputeNode.get_first_node_by_host_for_old_compat
        source = get(self.context, self.group.source)
        dest = get(self.context, host)
        if source.hypervisor_type != dest.hypervisor_type:
            raise nova_exception.InvalidHypervisorType()
        if (not CONF.workarounds.skip_hypervisor_version_check_on_lm and
                source.hypervisor_version > dest.hypervisor_version):
            raise nova_exception.DestinationHypervisorTooOld()

    # -- stream and election -------------------------------------------------

    def _stream_and_elect(self, ready):
        """Stream to ``ready``; return (winner or None, those left).

        Every destination that reported a failure was reverted; those left
        have not reported yet (or timed out).
        """
        self.group.stream()
        self.group.check_not_stopping()
        copy_disks = any(d.disk_agent_address for d in ready)
        streamed = []
        for d in ready:
            entry = {'migration_uuid': d.migration.uuid, 'host': d.host,
                     'agent_address': d.agent_address}
            if copy_disks:
                entry['disk_agent_address'] = d.disk_agent_address
            streamed.append(entry)
        try:
            self.clients.multidest_compute.start_stream(
                self.context, self.instance, streamed, self.secret,
                self._topology(), self.warm_up, block_migration=copy_disks)
        except Exception as error:
            # The source answered (1.2): its stream never started.
            self.group.check_not_stopping()
            reason = remote_reason(error)
            LOG.warning('The source could not start its stream: %s', reason,
                        instance=self.instance)
            self.group.reasons['source %s' % self.group.source] = reason
            for destination in ready:
                destination.fail(vocabulary.DestinationPhase.STREAM,
                                 'the source could not start its stream')
            return None, list(ready)
        self.group.check_not_stopping()
        self.group.streaming(ready)
        timeout = migration_limits.conductor_wait(
            self.instance.flavor.memory_mb)
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
                self.group.check_not_stopping()
                if time.monotonic() > deadline:
                    for late in waiting:
                        late.reason = 'no report within %d s' % timeout
                    return None, waiting
                continue
            waiting.remove(destination)
            self.group.check_not_stopping()
            if outcome != vocabulary.WaitOutcome.COMPLETED:
                destination.fail(vocabulary.DestinationPhase.STREAM, outcome)
                self.group.revert(destination,
                                  vocabulary.MigrationStatus.FAILED)
            elif self.group.elect(destination):
                return destination, waiting
        return None, []

    def _wait_one(self, destination, timeout, reports):
        try:
            outcome = self.clients.multidest_compute.wait_destination(
                self.context, self.instance, destination.migration, timeout)
        except Exception as error:
            outcome = 'wait failed: %s' % error
        reports.put((destination, outcome))
