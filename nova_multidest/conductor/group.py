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

"""One multi-destination group: its destinations, its election, its end.

A group is what one request migrates: one Migration record per
destination and the instance's group keys (``records.py``). Every change
to what exists goes through this object, in this order, and each step is
recorded before the next one starts, so that a conductor that dies
anywhere leaves Nova's records telling the truth::

    start_round   phase preparing   destinations chosen, claimed and
         |                          prepared; each failure reverted alone
    stream        phase streaming   the source streams to the ready ones
         |
    elect         phase finishing   the winner is recorded, then resumed;
         |                          one that cannot resume is reverted and
         |                          the next completed one may be elected
    finish        ended completed   Nova's post-live-migration for the
                                    winner, every other one reverted

    give_up       phase reverting   every destination reverted, the source
         |                          resumes; another round may start
    end_failed    ended failed      the server stays on its source

The task (``tasks/live_migrate_multi.py``) walks these steps; a task that
failed (its rollback) and a restarted conductor (``recovery.py``) reach
the same ends through ``settle``, from Nova's records alone.
"""

import concurrent.futures
import contextlib
import dataclasses
import time
import typing

from oslo_log import log as logging
import oslo_messaging as messaging

from nova import availability_zones
from nova.compute import power_state
from nova.compute import task_states
from nova.compute import utils as compute_utils
from nova import exception as nova_exception
from nova import objects
from nova.objects import fields as obj_fields

from nova_multidest.conductor import notifications
from nova_multidest.conductor import records
from nova_multidest.conductor import resources
from nova_multidest import conf
from nova_multidest import exceptions
from nova_multidest import vocabulary

LOG = logging.getLogger(__name__)
CONF = conf.CONF

LOST_ELECTION = 'another destination won'
# Seconds between two resume calls whose answers were lost.
_RESUME_RETRY_INTERVAL = 1.0


def _answer_lost(error):
    """True if a call may have run although no answer came back."""
    return (isinstance(error, messaging.MessagingException) and
            not isinstance(error, messaging.RemoteError))


@dataclasses.dataclass
class Destination:
    """One destination host of the group and what it holds."""

    host: str
    migration: typing.Any
    node: typing.Optional[str] = None
    prepare_sent: bool = False
    migrate_data: typing.Any = None
    agent_address: typing.Any = None
    disk_agent_address: typing.Any = None
    attachment_ids: dict = dataclasses.field(default_factory=dict)
    reason: typing.Optional[str] = None

    def fail(self, phase, error):
        self.reason = '%s: %s' % (phase, error)

    @property
    def label(self):
        """How reasons and logs name it: its host, if it ever had one."""
        return self.host or 'migration %s' % self.migration.uuid


class Group(object):
    """The group of ``instance``; see the module doc for its life.

    ``source`` and ``source_node`` are where the instance ran when the
    group started; None lets ``settle`` read them from the records.
    ``block_migration`` is the request's flag as Nova's RPCs take it.
    ``stopping()`` says the service is stopping: steps then raise
    ConductorStopping and leave the rest to the next conductor.
    """

    def __init__(self, context, instance, clients, source=None,
                 source_node=None, block_migration=None, stopping=None,
                 owner=None):
        self.context = context
        self.instance = instance
        self.clients = clients
        self.source = source
        self.source_node = source_node
        self.block_migration = block_migration
        self._stopping = stopping
        # The conductor service host that drives this group.
        self.owner = owner
        # Why each destination (or round) failed, for the fault and the
        # last_result summary.
        self.reasons = {}
        self._destination_labels = set()
        # The destinations of the current round, by Migration uuid.
        self.destinations = {}
        self.round_number = None
        # Set once the group's first record is written.
        self.started = False
        # (owner, generation) this process holds the group with; None
        # before it holds it.
        self.ownership = None

    def check_not_stopping(self):
        """Leave everything to recovery if our service is stopping.

        Simulates and handles a conductor crash alike: no cleanup, the
        records already tell the next conductor what to do.
        """
        if self._stopping is not None and self._stopping():
            raise exceptions.ConductorStopping(
                instance_uuid=self.instance.uuid)
        if self.ownership is not None:
            stored = objects.Instance.get_by_uuid(
                self.context, self.instance.uuid,
                expected_attrs=['system_metadata']).system_metadata
            records.check_held(self.instance.uuid, stored, self.ownership)

    def hold(self):
        """This process now holds the group as its records say."""
        self.ownership = records.ownership(self.instance.system_metadata)

    def owned(self):
        """Where the group's records are written: only while we hold it.

        ``check_not_stopping`` stops a fenced owner before its next step;
        this makes the write itself conditional, so a takeover between
        the check and the write cannot be undone by it.
        """
        if self.ownership is None:
            return contextlib.nullcontext()
        return records.owned(self.context, self.instance, self.ownership)

    # -- the way forward ----------------------------------------------------

    def start_round(self, round_number):
        self.destinations = {}
        self.round_number = round_number
        with self.owned():
            records.start_group(self.instance, round_number,
                                self.owner or CONF.host)
        self.started = True
        self.hold()

    def add(self, destination):
        self.destinations[destination.migration.uuid] = destination

    def stream(self):
        """Record that the source starts its stream.

        The Migrations stay ``preparing`` until ``streaming``.
        """
        with self.owned():
            records.set_phase(self.instance, vocabulary.GroupPhase.STREAMING)

    def streaming(self, ready):
        """The source holds its stream: the Migrations of ``ready`` run.

        Nova accepts force complete and abort of a ``running`` Migration
        only, and casts them to the source compute, which acts on the
        stream it holds. Marked earlier, a request answered 202 could reach
        the source before its stream and be dropped there: a warm-up then
        held until the completion timeout and the group failed.
        """
        for destination in ready:
            records.set_status(destination.migration,
                               vocabulary.MigrationStatus.RUNNING)

    def elect(self, destination):
        """Record ``destination`` as the winner, then let it resume.

        The record comes first: if we die between the two, recovery knows
        which copy may run. False if it could not resume; it is then
        reverted and another completed destination may be elected.
        """
        with self.owned():
            records.record_winner(self.instance, destination.migration.uuid,
                                  destination.attachment_ids)
        if not self._resume_elected(destination):
            self.revert(destination, vocabulary.MigrationStatus.FAILED)
            return False
        LOG.info('Elected %s', destination.host, instance=self.instance)
        notifications.elected(self.context, self, destination)
        return True

    def _resume_elected(self, destination):
        """Resume the recorded winner; False (winner cleared) if it can't.

        A destination that answers with an error never ran (the compute's
        contract), so the election may go on without it. A call whose
        answer never came may have resumed the guest: it is asked again
        (resume is idempotent) and, without an answer, the winner stays
        recorded and no other copy is ever elected (WinnerUnknown).
        """
        deadline = time.monotonic() + CONF.multidest.election_timeout
        while True:
            try:
                self.clients.multidest_compute.resume_destination(
                    self.context, self.instance, destination.migration)
                break
            except Exception as error:
                self.check_not_stopping()
                if _answer_lost(error):
                    if time.monotonic() < deadline:
                        LOG.warning('No answer from the elected %s; asking '
                                    'again: %s', destination.host, error,
                                    instance=self.instance)
                        time.sleep(_RESUME_RETRY_INTERVAL)
                        continue
                    raise exceptions.WinnerUnknown(
                        instance_uuid=self.instance.uuid,
                        host=destination.host, reason=error)
                LOG.warning('Elected destination %s failed to resume: %s',
                            destination.host, error, instance=self.instance)
                destination.fail(vocabulary.DestinationPhase.RESUME, error)
                with self.owned():
                    records.clear_winner(self.instance)
                return False
        with self.owned():
            records.record_resumed(self.instance, destination.migration.uuid)
        return True

    def finish(self, winner, losers):
        """Nova's post-live-migration bookkeeping for the winner.

        As in Nova's own, the server is ACTIVE on the winner first (its
        port bindings activated, then post_live_migration_at_destination)
        and the rest follows: the losers are reverted, the winner's claim
        made the instance's allocation and the source cleaned up, all at
        once. The losers are paused copies that never ran: their revert
        has no reason to compete with the winner for the conductor, the
        database and the computes before the server is ACTIVE. A source
        whose volumes the winner adopts is cleaned up before, as it must
        disconnect them while its BDMs still name them.
        """
        context, instance, clients = self.context, self.instance, self.clients
        self.check_not_stopping()
        if instance.host == winner.host:
            # A conductor that died got past Nova's post-live-migration;
            # what follows it may or may not have run, and runs again.
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                self._after_post_live(pool, winner, losers)
            self._end_completed(winner)
            return
        self._reclaim_task_state()
        compute_utils.notify_about_instance_action(
            context, instance, CONF.host,
            action=obj_fields.NotificationAction.LIVE_MIGRATION_POST,
            phase=obj_fields.NotificationPhase.START)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            bindings = pool.submit(
                clients.network_api.migrate_instance_start, context,
                instance, objects.Migration(source_compute=self.source,
                                            dest_compute=winner.host))
            if winner.attachment_ids:
                self._cleanup_source(winner)
                resources.adopt_attachments(
                    context, clients.volume_api, instance,
                    winner.attachment_ids)
            bindings.result()
            self._post_live_migration_at_destination(winner)
            # The call may have been long, or answered by another owner's.
            self.check_not_stopping()
            self._after_post_live(pool, winner, losers)
        instance.refresh()
        self._end_completed(winner)
        compute_utils.notify_about_instance_action(
            context, instance, CONF.host,
            action=obj_fields.NotificationAction.LIVE_MIGRATION_POST,
            phase=obj_fields.NotificationPhase.END)

    def _after_post_live(self, pool, winner, losers):
        """Revert the losers, adopt the claim, clean the source up: at once.

        Each step can run twice (after a conductor died in the middle). A
        source whose volumes the winner adopted was cleaned up before
        Nova's post-live-migration, and must not be again: its BDMs name
        the winner's connections now.
        """
        side_work = [
            pool.submit(self.revert_all, losers,
                        vocabulary.MigrationStatus.CANCELLED, LOST_ELECTION),
            pool.submit(resources.adopt_claim, self.context,
                        self.clients.report_client, self.instance,
                        winner.migration.uuid)]
        if not winner.attachment_ids:
            side_work.append(pool.submit(self._cleanup_source, winner))
        for future in side_work:
            future.result()

    def _post_live_migration_at_destination(self, winner):
        """Run Nova's bookkeeping on the winner, once, whoever asked first.

        The same call of a previous owner may still be in flight (sent
        before it died or was fenced) and land first: Nova then refuses
        ours (the task_state is no longer MIGRATING), and the server
        already runs on the winner, which is all ours was for.
        """
        try:
            self.clients.compute_rpcapi.post_live_migration_at_destination(
                self.context, self.instance, self.block_migration,
                winner.host)
        except Exception as error:
            self.instance.refresh()
            if (self.instance.host != winner.host or
                    self.instance.task_state is not None):
                raise
            LOG.info('Nova\'s post-live-migration on %s ran already (a call '
                     'of a previous owner): %s', winner.host, error,
                     instance=self.instance)

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
            with self.owned():
                self.instance.task_state = task_states.MIGRATING
                self.instance.save()

    def _cleanup_source(self, winner):
        self.clients.multidest_compute.cleanup_source(
            self.context, self.instance, winner.migration,
            migrate_data=winner.migrate_data)

    def _end_completed(self, winner):
        records.set_status(winner.migration,
                           vocabulary.MigrationStatus.COMPLETED)
        self._record_destination_event(winner)
        self.clients.network_api.cleanup_instance_network_on_host(
            self.context, self.instance, self.source)
        resources.sweep_attachments(self.context, self.clients.volume_api,
                                    self.instance)
        zone = availability_zones.get_host_availability_zone(
            self.context, winner.host)
        with self.owned():
            records.end_group(self.instance,
                              vocabulary.MigrationStatus.COMPLETED,
                              winner.host)
            self.instance.availability_zone = zone
            if self.instance.task_state == task_states.MIGRATING:
                self.instance.task_state = None
            self.instance.save()
        LOG.info('Live migration to %s completed', winner.host,
                 instance=self.instance)
        notifications.end(self.context, self, winner)

    # -- the way back -------------------------------------------------------

    def revert(self, destination, status):
        """Undo one destination without touching any other.

        What cannot be released is named in the destination's reason and
        logged: an operator must remove it.
        """
        if destination.prepare_sent:
            try:
                self.clients.multidest_compute.revert_destination(
                    self.context, self.instance, destination.migration)
            except Exception:
                LOG.exception('Could not revert destination %s',
                              destination.host, instance=self.instance)
        leftovers = resources.release(
            self.context, self.clients, self.instance, destination.host,
            destination.migration.uuid, destination.attachment_ids)
        records.set_status(destination.migration, status)
        reason = destination.reason or status
        if leftovers:
            reason = '%s; left behind: %s' % (reason, '; '.join(leftovers))
            LOG.error('Destination %s reverted, but %s', destination.host,
                      reason, instance=self.instance)
        self.reasons[destination.label] = reason
        self._destination_labels.add(destination.label)
        self.destinations.pop(destination.migration.uuid, None)
        self._record_destination_event(
            destination,
            None if status == vocabulary.MigrationStatus.COMPLETED else
            exceptions.DestinationFailed(destination=destination.host,
                                         reason=reason))

    def revert_all(self, destinations, status, reason):
        if not destinations:
            return
        for destination in destinations:
            destination.reason = destination.reason or reason
        with concurrent.futures.ThreadPoolExecutor(len(destinations)) as pool:
            list(pool.map(lambda d: self.revert(d, status), destinations))

    def give_up(self, destinations, status, reason):
        """Revert what is left of this round; the source runs on."""
        with self.owned():
            records.set_phase(self.instance,
                              vocabulary.GroupPhase.REVERTING)
        self.revert_all(destinations, status, reason)
        self.resume_source()

    def resume_source(self):
        try:
            self.clients.multidest_compute.resume_source(
                self.context, self.instance)
        except Exception:
            LOG.exception('Could not resume the source',
                          instance=self.instance)

    def refuse(self, error):
        """End a request refused before its group started.

        Nothing was changed but the task_state nova-api set, which goes
        back; the fault and the last result say why. Returns ``error``.
        """
        instance = self.instance
        compute_utils.add_instance_fault_from_exc(
            self.context, instance, error, fault_message=str(error))
        records.end_group(instance, vocabulary.MigrationStatus.FAILED,
                          instance.host, reasons={'request': str(error)})
        instance.task_state = None
        instance.save(expected_task_state=[task_states.MIGRATING, None])
        LOG.warning('Request refused: %s', error, instance=instance)
        return error

    def end_failed(self):
        """The server stays where it was, ACTIVE, and says why.

        Returns the AllDestinationsFailed the task raises.
        """
        instance = self.instance
        resources.sweep_attachments(self.context, self.clients.volume_api,
                                    instance)
        # The group's own reasons (source, scheduler, conductor) first: the
        # fault message keeps 255 characters.
        ordered = sorted(self.reasons.items(),
                         key=lambda item: (item[0] in self._destination_labels,
                                           str(item[0])))
        error = exceptions.AllDestinationsFailed(
            reasons='; '.join('%s: %s' % item for item in ordered) or
            'no destination found')
        compute_utils.add_instance_fault_from_exc(
            self.context, instance, error, fault_message=str(error))
        with self.owned():
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
        notifications.error(self.context, self)
        return error

    # -- from the records ----------------------------------------------------

    def settle(self, reason):
        """Bring the group to its end from Nova's records alone.

        A recorded winner whose copy ran, or still can, is finished: no
        other copy may ever run. Anything else is reverted with
        ``reason``, and the source resumes. Returns the
        AllDestinationsFailed of a group that ended so, else None.
        """
        instance = self.instance
        instance.refresh()
        if not records.group_in_progress(instance):
            return None
        # An owner that is stopping or was taken over must leave the group
        # to the next one: both finishing it at once race in Placement.
        self.check_not_stopping()
        self._drop_pending_claim()
        migrations = self._without_hostless(
            records.group_migrations(self.context, instance))
        elected = self._elected_migration(migrations)
        if self.source is None:
            first = elected or (migrations[0] if migrations else None)
            self.source = first.source_compute if first else instance.host
            self.source_node = first.source_node if first else instance.node
        destinations = {m.uuid: self._destination_of(m, reason)
                        for m in migrations}
        winner = None
        if elected is not None:
            winner = destinations.pop(elected.uuid, None) or Destination(
                elected.dest_compute, elected, node=elected.dest_node,
                prepare_sent=True)
            winner.reason = None
            winner.attachment_ids = records.winner_attachments(instance)
        losers = list(destinations.values())
        if winner is not None and self._winner_runs(winner):
            notifications.recovery(self.context, self,
                                   vocabulary.RecoveryAction.FINISH, reason)
            self.finish(winner, losers)
            return None
        if winner is not None:
            losers.append(winner)
        notifications.recovery(self.context, self,
                               vocabulary.RecoveryAction.ROLLBACK, reason)
        with self.owned():
            records.set_phase(instance, vocabulary.GroupPhase.REVERTING)
        self.revert_all(losers, vocabulary.MigrationStatus.FAILED, reason)
        self.clients.multidest_compute.abort_stream(self.context, instance)
        self.resume_source()
        self.reasons.setdefault('conductor', reason)
        return self.end_failed()

    def _drop_pending_claim(self):
        """Release the claim of a scheduler call never seen to return."""
        consumer_uuid = records.pending_claim(self.instance)
        if consumer_uuid is None:
            return
        resources.release(self.context, self.clients, self.instance, None,
                          consumer_uuid, None)
        with self.owned():
            records.set_pending_claim(self.instance, None)

    def _without_hostless(self, migrations):
        """Drop Migrations that never got a destination host.

        Earlier releases created one before the scheduler call: nothing
        was prepared for it, only its claim may exist. It is no
        destination, so it gets no revert call and no reason.
        """
        kept = []
        for migration in migrations:
            if migration.dest_compute:
                kept.append(migration)
                continue
            resources.release(self.context, self.clients, self.instance,
                              None, migration.uuid, None)
            records.set_status(migration,
                               vocabulary.MigrationStatus.CANCELLED)
        return kept

    def _elected_migration(self, migrations):
        winner_uuid = records.winner(self.instance)
        if not winner_uuid:
            return None
        for migration in migrations:
            if migration.uuid == winner_uuid:
                return migration
        try:
            return objects.Migration.get_by_uuid(self.context, winner_uuid)
        except nova_exception.MigrationNotFound:
            return None

    def _destination_of(self, migration, reason):
        """This process's view of a destination, else its record's."""
        destination = self.destinations.get(migration.uuid) or Destination(
            migration.dest_compute, migration, node=migration.dest_node,
            prepare_sent=True)
        destination.reason = destination.reason or reason
        return destination

    def _winner_runs(self, winner):
        """True once the elected copy runs; resumes it if that never happened.

        A winner is recorded before it resumes: if the conductor died in
        between, resuming now is the only way forward that keeps exactly
        one copy; if that fails the winner never ran and the source may
        resume.
        """
        if (records.resumed(self.instance) == winner.migration.uuid or
                winner.migration.status ==
                vocabulary.MigrationStatus.COMPLETED or
                self.instance.host == winner.host):
            return True
        return self._resume_elected(winner)

    def _record_destination_event(self, destination, error=None):
        notifications.destination(
            self.context, self, destination, destination.migration.status,
            None if error is None else self.reasons.get(destination.host))
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
