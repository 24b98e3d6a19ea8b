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
system_metadata. nova-api reads the same keys to refuse a second request
while a group runs.
"""

import json

from nova import objects

KEY_PREFIX = 'multidest_'
# Constant value so that recovery can find groups with Nova's exact-match
# system_metadata filter.
ACTIVE_KEY = KEY_PREFIX + 'active'
ACTIVE_VALUE = 'true'
PHASE_KEY = KEY_PREFIX + 'phase'
ROUND_KEY = KEY_PREFIX + 'round'
# Migration uuid of the elected destination, written before it resumes.
WINNER_KEY = KEY_PREFIX + 'winner'
# Written once the elected destination's guest runs: from then on no
# other copy may ever run.
RESUMED_KEY = KEY_PREFIX + 'resumed'
RESULT_KEY = KEY_PREFIX + 'last_result'
# One key per volume: the winner's attachment of that volume.
ATTACHMENT_KEY_PREFIX = KEY_PREFIX + 'attachment_'

PHASE_PREPARING = 'preparing'
PHASE_STREAMING = 'streaming'
PHASE_FINISHING = 'finishing'
PHASE_REVERTING = 'reverting'

# Migration.status values.
ACCEPTED = 'accepted'
PREPARING = 'preparing'
RUNNING = 'running'
COMPLETED = 'completed'
CANCELLED = 'cancelled'
FAILED = 'failed'
IN_PROGRESS = (ACCEPTED, PREPARING, RUNNING)
FINAL = (COMPLETED, CANCELLED, FAILED)

# system_metadata values are limited to 255 characters.
_MAX_VALUE = 255


def group_in_progress(instance):
    return instance.system_metadata.get(ACTIVE_KEY) == ACTIVE_VALUE


def start_group(instance, round_number):
    meta = instance.system_metadata
    meta.pop(RESULT_KEY, None)
    meta[ACTIVE_KEY] = ACTIVE_VALUE
    meta[PHASE_KEY] = PHASE_PREPARING
    meta[ROUND_KEY] = str(round_number)
    instance.save()


def set_phase(instance, phase):
    instance.system_metadata[PHASE_KEY] = phase
    instance.save()


def phase(instance):
    return instance.system_metadata.get(PHASE_KEY)


def record_winner(instance, migration_uuid, attachment_ids=None):
    """Durably elect a destination, with the volume attachments it made.

    The attachments are needed to finish the winner after a crash; one
    key per volume keeps each value far below the column size.
    """
    meta = instance.system_metadata
    meta[WINNER_KEY] = migration_uuid
    meta[PHASE_KEY] = PHASE_FINISHING
    for volume_id, attachment_id in (attachment_ids or {}).items():
        meta[ATTACHMENT_KEY_PREFIX + volume_id] = attachment_id
    instance.save()


def clear_winner(instance):
    meta = instance.system_metadata
    for key in [k for k in meta if k.startswith(ATTACHMENT_KEY_PREFIX)]:
        del meta[key]
    meta.pop(WINNER_KEY, None)
    meta[PHASE_KEY] = PHASE_STREAMING
    instance.save()


def winner_attachments(instance):
    return {key[len(ATTACHMENT_KEY_PREFIX):]: value
            for key, value in instance.system_metadata.items()
            if key.startswith(ATTACHMENT_KEY_PREFIX)}


def winner(instance):
    return instance.system_metadata.get(WINNER_KEY)


def record_resumed(instance, migration_uuid):
    instance.system_metadata[RESUMED_KEY] = migration_uuid
    instance.save()


def resumed(instance):
    return instance.system_metadata.get(RESUMED_KEY)


def end_group(instance, result, host, reasons=None):
    """Drop the group keys and leave a short summary for operators."""
    meta = instance.system_metadata
    for key in [k for k in meta if k.startswith(KEY_PREFIX)]:
        del meta[key]
    summary = {'result': result, 'host': host}
    if reasons:
        summary['reasons'] = reasons
    text = json.dumps(summary, sort_keys=True)
    if len(text) > _MAX_VALUE:
        summary['reasons'] = 'see the instance action events'
        text = json.dumps(summary, sort_keys=True)
    meta[RESULT_KEY] = text


def group_migrations(context, instance):
    """The in-progress live migrations of the instance: its group."""
    migrations = objects.MigrationList.get_by_filters(
        context, {'instance_uuid': instance.uuid,
                  'migration_type': 'live-migration',
                  'status': list(IN_PROGRESS)})
    return list(migrations)


def set_status(migration, status):
    migration.status = status
    migration.save()
