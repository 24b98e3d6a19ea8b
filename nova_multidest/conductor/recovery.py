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

"""Finish or roll back groups whose conductor died.

Runs at every start of nova-multidest-conductor, from Nova's records
only: a group is in progress while the instance carries the
``multidest_active`` system_metadata key; its destinations are the
instance's live migrations still in progress. A recorded winner is
finished (its guest may already run: no other copy ever may); without
one every destination is reverted and the source resumes.
"""

from oslo_log import log as logging

from nova import context as nova_context
from nova import exception as nova_exception
from nova import objects

from nova_multidest.conductor import records
from nova_multidest.conductor.tasks import live_migrate_multi as task_mod
from nova_multidest import exceptions
from nova_multidest import vocabulary

LOG = logging.getLogger(__name__)

REASON = 'interrupted: nova-multidest-conductor restarted'


def recover_all(context, clients, stopping=None):
    for cell in objects.CellMappingList.get_all(context):
        if cell.is_cell0():
            continue
        with nova_context.target_cell(context, cell) as cell_context:
            instances = objects.InstanceList.get_by_filters(
                cell_context,
                {'deleted': False,
                 'system_metadata': {vocabulary.SYSMETA_ACTIVE:
                                     vocabulary.SYSMETA_ACTIVE_VALUE}},
                expected_attrs=list(vocabulary.INSTANCE_ATTRS))
            for instance in instances:
                LOG.info('Recovering an interrupted multi-destination '
                         'live migration', instance=instance)
                recover_instance(cell_context, clients, instance, stopping)


def _winner_migration(context, instance, migrations):
    winner_uuid = records.winner(instance)
    if not winner_uuid:
        return None
    for migration in migrations:
        if migration.uuid == winner_uuid:
            return migration
    try:
        return objects.Migration.get_by_uuid(context, winner_uuid)
    except nova_exception.MigrationNotFound:
        return None


def recover_instance(context, clients, instance, stopping=None):
    """Bring one interrupted group to its end; never raises."""
    try:
        _recover(context, clients, instance, stopping)
    except exceptions.AllDestinationsFailed as error:
        LOG.warning('Rolled back: %s', error, instance=instance)
    except exceptions.ConductorStopping:
        LOG.info('Stopping: recovery continues at the next start',
                 instance=instance)
    except Exception:
        LOG.exception('Could not recover the multi-destination migration; '
                      'it is retried at the next conductor start',
                      instance=instance)


def _recover(context, clients, instance, stopping):
    instance.refresh()
    if not records.group_in_progress(instance):
        return
    migrations = records.group_migrations(context, instance)
    task = task_mod.LiveMigrateMultiTask(context, instance, clients,
                                         stopping=stopping)
    winner_migration = _winner_migration(context, instance, migrations)
    if migrations or winner_migration:
        first = winner_migration or migrations[0]
        task.source = first.source_compute
        task.source_node = first.source_node
    destinations = {
        m.uuid: task_mod.Destination(m.dest_compute, m, node=m.dest_node,
                                     prepare_sent=True,
                                     reason=REASON)
        for m in migrations}
    winner = None
    if winner_migration is not None:
        winner = destinations.pop(
            winner_migration.uuid,
            task_mod.Destination(winner_migration.dest_compute,
                                 winner_migration))
        winner.reason = None
        winner.attachment_ids = records.winner_attachments(instance)
    losers = list(destinations.values())
    if winner is not None and _winner_runs(task, winner):
        if instance.host == winner.host:
            task.revert_all(losers, vocabulary.MigrationStatus.CANCELLED,
                            REASON)
            clients.report_client.move_allocations(
                context, winner.migration.uuid, instance.uuid)
            task.end_completed(winner)
        else:
            task.losers = losers
            task.finish(winner)
        return
    if winner is not None:
        losers.append(winner)
    task.revert_all(losers, vocabulary.MigrationStatus.FAILED, REASON)
    clients.multidest_compute.abort_stream(context, instance)
    task.resume_source()
    task.reasons.setdefault('conductor', REASON)
    task.all_failed()


def _winner_runs(task, winner):
    """True once the elected copy runs; resumes it if that never happened.

    A winner is recorded before it resumes: if the conductor died in
    between, resuming now is the only way forward that keeps exactly one
    copy; if that fails the winner never ran and the source may resume.
    """
    instance = task.instance
    if (records.resumed(instance) == winner.migration.uuid or
            winner.migration.status == vocabulary.MigrationStatus.COMPLETED or
            instance.host == winner.host):
        return True
    try:
        task.clients.multidest_compute.resume_destination(
            task.context, instance, winner.migration)
    except Exception as error:
        LOG.warning('Recorded winner %s cannot resume: %s', winner.host,
                    error, instance=instance)
        winner.fail(vocabulary.DestinationPhase.RESUME, error)
        records.clear_winner(instance)
        return False
    records.record_resumed(instance, winner.migration.uuid)
    return True
