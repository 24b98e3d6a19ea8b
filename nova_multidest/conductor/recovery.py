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

from nova import context as nova_context
from nova import objects

from nova_multidest.conductor import group as group_mod
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


def recover_instance(context, clients, instance, stopping=None):
    """Bring one interrupted group to its end; never raises."""
    group = group_mod.Group(context, instance, clients, stopping=stopping)
    try:
        error = group.settle(REASON)
    except exceptions.ConductorStopping:
        LOG.info('Stopping: recovery continues at the next start',
                 instance=instance)
    except Exception:
        LOG.exception('Could not recover the multi-destination migration; '
                      'it is retried at the next conductor start',
                      instance=instance)
    else:
        if error is not None:
            LOG.warning('Rolled back: %s', error, instance=instance)
