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

"""Requests nova-api accepted that never reached a group record.

nova-api sets ``task_state=migrating``, starts a ``live-migration``
instance action and casts to nova-multidest-conductor. Until the
conductor writes the group's first record (``records.start_group``) only
those two things tell that a request exists: a conductor that fails
before, a cast that is lost, or no conductor at all would leave the
server MIGRATING for good. So a request is rolled back (task_state
cleared, an error event in its action, the reason in the server fault)
when its conductor fails before the group starts, and, from a periodic
task of every conductor, when its action is older than ``[multidest]
accept_timeout`` with nothing started: no event and no Migration. A
conductor refuses a request older than half that bound, so the periodic
rollback never races a group that is starting.
"""

from oslo_log import log as logging
from oslo_utils import timeutils

from nova.compute import instance_actions
from nova.compute import task_states
from nova.compute import utils as compute_utils
from nova import context as nova_context
from nova import exception as nova_exception
from nova import objects

from nova_multidest.conductor import records
from nova_multidest import conf
from nova_multidest import exceptions
from nova_multidest import vocabulary

LOG = logging.getLogger(__name__)
CONF = conf.CONF


def abandon(context, instance, error):
    """Roll back a request whose group never started; never raises.

    Returns False if another operation owns the server meanwhile (its
    task_state is no longer MIGRATING, or a group started).
    """
    try:
        instance.refresh()
        if records.group_in_progress(instance):
            return False
        instance.task_state = None
        instance.save(expected_task_state=[task_states.MIGRATING])
    except (nova_exception.UnexpectedTaskStateError,
            nova_exception.InstanceNotFound):
        return False
    except Exception:
        LOG.exception('Could not roll back the request', instance=instance)
        return False
    LOG.warning('Request rolled back before it started: %s', error,
                instance=instance)
    try:
        compute_utils.add_instance_fault_from_exc(
            context, instance, error, fault_message=str(error))
        _finish_action(context, instance, error)
    except Exception:
        LOG.exception('Could not record why the request was rolled back',
                      instance=instance)
    return True


def _finish_action(context, instance, error):
    """An error event in the request's action, and the action ended."""
    name = vocabulary.EVENT_LIVE_MIGRATION
    objects.InstanceActionEvent.event_start(
        context, instance.uuid, name, want_result=False, host=CONF.host)
    objects.InstanceActionEvent.event_finish_with_failure(
        context, instance.uuid, name, exc_val=error, exc_tb=str(error),
        want_result=False)
    objects.InstanceAction.action_finish(context, instance.uuid,
                                         want_result=False)


def request_age(context, instance):
    """Seconds since nova-api accepted this request, or None if unknown."""
    try:
        action = objects.InstanceAction.get_by_request_id(
            context, instance.uuid, context.request_id)
    except Exception:
        LOG.debug('No instance action for request %s', context.request_id,
                  instance=instance)
        return None
    if action is None or action.start_time is None:
        return None
    return _age(action)


def _age(action):
    """Seconds since the action started (the database's time is aware)."""
    return timeutils.delta_seconds(
        timeutils.normalize_time(action.start_time), timeutils.utcnow())


def too_old(context, instance):
    """True for a request the periodic rollback may be ending."""
    age = request_age(context, instance)
    return age is not None and age > CONF.multidest.accept_timeout / 2.0


def roll_back_unstarted(context):
    """Roll back every request older than accept_timeout never started."""
    for cell in objects.CellMappingList.get_all(context):
        if cell.is_cell0():
            continue
        try:
            with nova_context.target_cell(context, cell) as cell_context:
                for instance in _migrating(cell_context):
                    action = _never_started(cell_context, instance)
                    if action is None:
                        continue
                    # The request's own id finds its action and events.
                    request_context = cell_context.elevated()
                    request_context.request_id = action.request_id
                    abandon(request_context, instance,
                            exceptions.RequestNotStarted(
                                seconds=CONF.multidest.accept_timeout))
        except Exception:
            LOG.exception('Could not look for unstarted requests in cell %s',
                          cell.uuid)


def _migrating(context):
    instances = objects.InstanceList.get_by_filters(
        context, {'deleted': False, 'task_state': task_states.MIGRATING},
        expected_attrs=list(vocabulary.INSTANCE_ATTRS))
    return [i for i in instances if not records.group_in_progress(i)]


def _never_started(context, instance):
    """The request's action if no conductor started it in time, else None."""
    actions = objects.InstanceActionList.get_by_instance_uuid(
        context, instance.uuid, limit=1)
    if not actions:
        return None
    action = actions[0]
    if (action.action != instance_actions.LIVE_MIGRATION or
            action.finish_time is not None or action.start_time is None):
        return None
    if _age(action) < CONF.multidest.accept_timeout:
        return None
    if objects.InstanceActionEventList.get_by_action(context, action.id):
        # A conductor (ours or Nova's) took it.
        return None
    migrations = objects.MigrationList.get_by_filters(
        context, {'instance_uuid': instance.uuid,
                  'status': list(vocabulary.MigrationStatus.IN_PROGRESS) +
                  [vocabulary.MigrationStatus.QUEUED]})
    return None if migrations else action
