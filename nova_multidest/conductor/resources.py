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

"""What one destination holds outside its host, and how it is released.

A destination holds a placement claim (consumer: its Migration uuid), an
inactive port binding per port on its host, and a volume attachment per
volume (created by the destination compute, which has the connector).
Releasing one destination touches only those, so a loser can be reverted
while other destinations still receive the stream. The winner's are made
the instance's own instead.
"""

from oslo_log import log as logging
from oslo_serialization import jsonutils

from nova import exception as nova_exception
from nova import objects

LOG = logging.getLogger(__name__)

# Looks at Placement before a claim that keeps changing is given up.
_ADOPT_ATTEMPTS = 3


def bind_ports(context, network_api, instance, host, migrate_data):
    """Create inactive port bindings on ``host``; record them in vifs.

    As Nova's LiveMigrationTask._bind_ports_on_destination: the binding
    profile the destination compute proposed in migrate_data is kept.
    """
    if not network_api.has_port_binding_extension(context):
        return
    profiles = {}
    for vif in migrate_data.vifs:
        profile = vif.profile if 'profile_json' in vif else {}
        if profile:
            profiles[vif.port_id] = profile
    bindings = network_api.bind_ports_to_host(
        context=context, instance=instance, host=host, vnic_types=None,
        port_profiles=profiles)
    for vif in migrate_data.vifs:
        binding = bindings[vif.port_id]
        vif.profile = binding.get('profile')
        vif.vnic_type = binding['vnic_type']
        if 'vif_details' in binding:
            vif.vif_details = binding['vif_details']
        if 'vif_type' in binding:
            vif.vif_type = binding['vif_type']


def release(context, clients, instance, host, migration_uuid,
            attachment_ids):
    """Drop one destination's binding, attachments and claim.

    Every step runs even if an earlier one failed. Returns what could not
    be released, one sentence each, for the destination's reason.
    """
    leftovers = []
    try:
        if host:
            clients.network_api.cleanup_instance_network_on_host(
                context, instance, host)
    except Exception as error:
        LOG.exception('Could not delete port bindings on %s', host,
                      instance=instance)
        leftovers.append('port bindings on %s (%s)' % (host, error))
    for attachment_id in attachment_ids or ():
        try:
            clients.volume_api.attachment_delete(context, attachment_id)
        except nova_exception.VolumeAttachmentNotFound:
            pass
        except Exception as error:
            LOG.exception('Could not delete volume attachment %s',
                          attachment_id, instance=instance)
            leftovers.append('volume attachment %s (%s)'
                             % (attachment_id, error))
    try:
        clients.report_client.delete_allocation_for_instance(
            context, migration_uuid, consumer_type='migration', force=True)
    except Exception as error:
        LOG.exception('Could not delete the allocation of migration %s',
                      migration_uuid, instance=instance)
        leftovers.append('placement allocation of consumer %s (%s)' % (
            migration_uuid, error))
    return leftovers


def sweep_attachments(context, volume_api, instance):
    """Delete every attachment of the instance its BDMs do not use.

    Run only when no destination is in flight: a destination whose
    prepare call failed half-way may have created attachments we never
    heard of.
    """
    bdms = objects.BlockDeviceMappingList.get_by_instance_uuid(
        context, instance.uuid)
    used = {bdm.attachment_id for bdm in bdms if bdm.is_volume}
    if not used:
        return
    for attachment in volume_api.attachment_get_all(
            context, instance_id=instance.uuid):
        if attachment['id'] in used:
            continue
        LOG.info('Deleting leftover volume attachment %s', attachment['id'],
                 instance=instance)
        try:
            volume_api.attachment_delete(context, attachment['id'])
        except nova_exception.VolumeAttachmentNotFound:
            pass


def adopt_attachments(context, volume_api, instance, attachment_ids):
    """Make the winner's attachments the instance's own.

    Call after the source disconnected its volumes: the source's
    attachments are deleted here.
    """
    bdms = objects.BlockDeviceMappingList.get_by_instance_uuid(
        context, instance.uuid)
    for bdm in bdms:
        new_id = (attachment_ids or {}).get(bdm.volume_id)
        if not bdm.is_volume or not new_id or new_id == bdm.attachment_id:
            continue
        old_id = bdm.attachment_id
        attachment = volume_api.attachment_get(context, new_id)
        bdm.attachment_id = new_id
        bdm.connection_info = jsonutils.dumps(
            attachment['connection_info'])
        bdm.save()
        volume_api.attachment_complete(context, new_id)
        if old_id:
            try:
                volume_api.attachment_delete(context, old_id)
            except nova_exception.VolumeAttachmentNotFound:
                pass


def adopt_claim(context, report_client, instance, migration_uuid):
    """Make the winner's claim the instance's allocation.

    Another conductor may be moving the same claim (a previous owner whose
    step was in flight when it was fenced): Placement then refuses one of
    the two writes with a consumer generation conflict. Looking again
    settles it, since Nova's move_allocations counts a claim already moved
    as done; a claim that still changes after every look is raised.
    """
    for attempt in range(1, _ADOPT_ATTEMPTS + 1):
        try:
            return report_client.move_allocations(
                context, migration_uuid, instance.uuid)
        except nova_exception.AllocationMoveFailed as error:
            if attempt == _ADOPT_ATTEMPTS:
                raise
            LOG.info('The claim of migration %s changed while it was moved '
                     '(attempt %d of %d); looking again: %s', migration_uuid,
                     attempt, _ADOPT_ATTEMPTS, error, instance=instance)
