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

"""The durable record of one multi-destination group.

Everything the conductor must know after a crash lives in Nova's own
records: one Migration row per destination (its uuid is also the placement
consumer of that destination's claim) and a few keys in the instance's
system_metadata (named in ``vocabulary.py``). nova-api and the computes
read the same keys: the one to refuse a second request while a group
runs, the others to let only the elected copy run.
"""

import contextlib
import json

from nova.db.main import api as main_db_api
from nova.db.main import models as main_models
from nova import objects
from nova.objects import fields as obj_fields

from nova_multidest import exceptions
from nova_multidest import vocabulary

# system_metadata values are limited to 255 characters.
_MAX_VALUE = 255


def group_in_progress(instance):
    return vocabulary.group_in_progress(instance.system_metadata)


def start_group(instance, round_number, owner):
    meta = instance.system_metadata
    meta.pop(vocabulary.SYSMETA_LAST_RESULT, None)
    meta[vocabulary.SYSMETA_OWNER] = owner
    meta.setdefault(vocabulary.SYSMETA_GENERATION, '1')
    meta[vocabulary.SYSMETA_ACTIVE] = vocabulary.SYSMETA_ACTIVE_VALUE
    meta[vocabulary.SYSMETA_PHASE] = vocabulary.GroupPhase.PREPARING
    meta[vocabulary.SYSMETA_ROUND] = str(round_number)
    instance.save()


def take_over(context, instance, owner):
    """Make ``owner`` the group's owner, fencing the previous one.

    Two conductors that both find the owner down must not both take the
    group: the takeover is written only if the ownership is still the one
    ``instance`` was read with, so the second one is fenced.
    """
    meta = instance.system_metadata
    with owned(context, instance, ownership(meta)):
        meta[vocabulary.SYSMETA_OWNER] = owner
        meta[vocabulary.SYSMETA_GENERATION] = str(
            int(meta.get(vocabulary.SYSMETA_GENERATION) or 0) + 1)
        instance.save()


def ownership(system_metadata):
    """(owner, generation) of a group, from its system_metadata."""
    return (system_metadata.get(vocabulary.SYSMETA_OWNER),
            system_metadata.get(vocabulary.SYSMETA_GENERATION))


def check_held(instance_uuid, stored, held):
    """Raise GroupFenced unless ``stored`` keys say ``held`` owns the group."""
    if (not vocabulary.group_in_progress(stored) or
            ownership(stored) != held):
        raise exceptions.GroupFenced(
            instance_uuid=instance_uuid,
            owner='%s (generation %s)' % ownership(stored))


_OWNERSHIP_KEYS = (vocabulary.SYSMETA_ACTIVE, vocabulary.SYSMETA_OWNER,
                   vocabulary.SYSMETA_GENERATION)


def _locked_ownership(context, instance_uuid):
    rows = (context.session.query(main_models.InstanceSystemMetadata)
            .filter_by(instance_uuid=instance_uuid, deleted=0)
            .filter(main_models.InstanceSystemMetadata.key.in_(
                _OWNERSHIP_KEYS))
            .with_for_update()
            .all())
    return {row.key: row.value for row in rows}


@contextlib.contextmanager
def owned(context, instance, held):
    """Let the writes made inside happen only while ``held`` owns the group.

    A check and a later write leave a window in which another conductor
    can take the group over; Instance.save writes the whole
    system_metadata, so the stale owner's write would undo the new
    owner's records. The ownership keys are read locked (SELECT ... FOR
    UPDATE) in the transaction that writes, which ``instance.save()``
    joins: a takeover waits for the write, or the write sees it and
    raises GroupFenced with nothing written.
    """
    with main_db_api.get_context_manager(context).writer.using(context):
        check_held(instance.uuid,
                   _locked_ownership(context, instance.uuid), held)
        with instance.obj_alternate_context(context):
            yield


def set_phase(instance, phase):
    instance.system_metadata[vocabulary.SYSMETA_PHASE] = phase
    instance.save()


def phase(instance):
    return instance.system_metadata.get(vocabulary.SYSMETA_PHASE)


def set_pending_claim(instance, consumer_uuid):
    """Record (or with None, forget) the scheduler call's claim consumer."""
    meta = instance.system_metadata
    if consumer_uuid is None:
        if meta.pop(vocabulary.SYSMETA_PENDING_CLAIM, None) is None:
            return
    else:
        meta[vocabulary.SYSMETA_PENDING_CLAIM] = consumer_uuid
    instance.save()


def pending_claim(instance):
    return instance.system_metadata.get(vocabulary.SYSMETA_PENDING_CLAIM)


def _attachment_keys(meta):
    return [key for key in meta
            if key.startswith(vocabulary.SYSMETA_ATTACHMENT_PREFIX)]


def record_winner(instance, migration_uuid, attachment_ids=None):
    """Durably elect a destination, with the volume attachments it made.

    The attachments are needed to finish the winner after a crash; one
    key per volume keeps each value far below the column size.
    """
    meta = instance.system_metadata
    meta[vocabulary.SYSMETA_WINNER] = migration_uuid
    meta[vocabulary.SYSMETA_PHASE] = vocabulary.GroupPhase.FINISHING
    for volume_id, attachment_id in (attachment_ids or {}).items():
        meta[vocabulary.SYSMETA_ATTACHMENT_PREFIX + volume_id] = (
            attachment_id)
    instance.save()


def clear_winner(instance):
    meta = instance.system_metadata
    for key in _attachment_keys(meta):
        del meta[key]
    meta.pop(vocabulary.SYSMETA_WINNER, None)
    meta[vocabulary.SYSMETA_PHASE] = vocabulary.GroupPhase.STREAMING
    instance.save()


def winner_attachments(instance):
    meta = instance.system_metadata
    prefix = len(vocabulary.SYSMETA_ATTACHMENT_PREFIX)
    return {key[prefix:]: meta[key] for key in _attachment_keys(meta)}


def winner(instance):
    return instance.system_metadata.get(vocabulary.SYSMETA_WINNER)


def record_resumed(instance, migration_uuid):
    instance.system_metadata[vocabulary.SYSMETA_RESUMED] = migration_uuid
    instance.save()


def resumed(instance):
    return instance.system_metadata.get(vocabulary.SYSMETA_RESUMED)


def end_group(instance, result, host, reasons=None):
    """Drop the group keys and leave a short summary for operators."""
    meta = instance.system_metadata
    for key in [k for k in meta if k.startswith(vocabulary.SYSMETA_PREFIX)]:
        del meta[key]
    summary = {'result': result, 'host': host}
    if reasons:
        summary['reasons'] = reasons
    text = json.dumps(summary, sort_keys=True)
    if len(text) > _MAX_VALUE:
        summary['reasons'] = 'see the instance action events'
        text = json.dumps(summary, sort_keys=True)
    meta[vocabulary.SYSMETA_LAST_RESULT] = text


def group_migrations(context, instance):
    """The in-progress live migrations of the instance: its group."""
    migrations = objects.MigrationList.get_by_filters(
        context, {'instance_uuid': instance.uuid,
                  'migration_type': obj_fields.MigrationType.LIVE_MIGRATION,
                  'status': list(vocabulary.MigrationStatus.IN_PROGRESS)})
    return list(migrations)


def set_status(migration, status):
    migration.status = status
    migration.save()
