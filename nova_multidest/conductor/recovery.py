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
instance's live migrations still in progress. The group (``group.py``)
settles each: a recorded winner is finished (its guest may already run:
no other copy ever may); without one every destination is reverted and
the source resumes.
"""

from oslo_log import log as logging

from nova.compute import utils as compute_utils
from nova import context as nova_context
from nova import objects

from nova_multidest.conductor import group as group_mod
from nova_multidest.conductor import records
from nova_multidest import conf
from nova_multidest import exceptions
from nova_multidest import vocabulary

LOG = logging.getLogger(__name__)
CONF = conf.CONF

REASON = 'interrupted: nova-multidest-conductor restarted'


def recover_all(context, clients, stopping=None, at_start=True,
                running=(), host=None):
    """Recover every interrupted group of every cell that is ours to take.

    A group is ours to take when its owner is this conductor (a previous
    run of it; ``running`` names the groups this run drives) or when its
    owner's service is down: its lease, Nova's service heartbeat, expired.
    Groups that name no owner (recorded by an earlier release) are taken
    at start only. One cell, or one group, that cannot be recovered never
    stops the others.
    """
    for cell in objects.CellMappingList.get_all(context):
        if cell.is_cell0():
            continue
        try:
            with nova_context.target_cell(context, cell) as cell_context:
                instances = _interrupted(cell_context)
                for instance in instances:
                    if stopping is not None and stopping():
                        return
                    if not _ours_to_take(context, clients, instance,
                                         at_start, running, host):
                        continue
                    LOG.info('Recovering an interrupted multi-destination '
                             'live migration', instance=instance)
                    recover_instance(cell_context, clients, instance,
                                     stopping, host)
        except Exception:
            LOG.exception('Could not look for interrupted migrations in '
                          'cell %s; they are recovered at the next start',
                          cell.uuid)


def _ours_to_take(context, clients, instance, at_start, running, host):
    if instance.uuid in running:
        return False
    owner, _ = records.ownership(instance.system_metadata)
    if owner is None:
        return at_start
    if owner == host:
        return True
    service = objects.Service.get_by_host_and_binary(
        context, owner, vocabulary.CONDUCTOR_BINARY)
    if service is not None and clients.servicegroup_api.service_is_up(
            service):
        return False
    LOG.info('The owner of this migration, conductor %s, is down: taking '
             'it over', owner, instance=instance)
    return True


def _interrupted(context):
    return objects.InstanceList.get_by_filters(
        context,
        {'deleted': False,
         'system_metadata': {vocabulary.SYSMETA_ACTIVE:
                             vocabulary.SYSMETA_ACTIVE_VALUE}},
        expected_attrs=list(vocabulary.INSTANCE_ATTRS))


def recover_instance(context, clients, instance, stopping=None, host=None):
    """Bring one interrupted group to its end; never raises."""
    host = host or CONF.host
    group = group_mod.Group(context, instance, clients, stopping=stopping,
                            owner=host)
    try:
        instance.refresh()
        if not records.group_in_progress(instance):
            return
        records.take_over(context, instance, host)
        group.hold()
        error = group.settle(REASON)
    except exceptions.ConductorStopping as error:
        LOG.info('Recovery stops here: %s', error, instance=instance)
    except Exception as error:
        LOG.exception('Could not recover the multi-destination migration; '
                      'the periodic recovery of this conductor retries it',
                      instance=instance)
        record_fault(context, instance, error)
    else:
        if error is not None:
            LOG.warning('Rolled back: %s', error, instance=instance)


def record_fault(context, instance, error):
    """Say in the server's fault why its group could not be ended."""
    failure = exceptions.RecoveryFailed(reason=error)
    try:
        compute_utils.add_instance_fault_from_exc(
            context, instance, failure, fault_message=str(failure))
    except Exception:
        LOG.exception('Could not record the fault', instance=instance)
