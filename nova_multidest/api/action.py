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

"""The ``os-migrateLive-multi`` server action, as a Nova API controller.

The filter (``filter.py``) hands the action to Nova's own
``nova.api.openstack.wsgi.Resource`` wrapping this controller, so the
action passes every check Nova's own actions pass before this code runs:
microversion headers (400 malformed, 406 unsupported, the legacy
``X-OpenStack-Nova-API-Version`` header alike), content type, body
parsing, the project id of the URL against the token's, and Nova's fault
format and response headers. What remains here is the action itself:
its body, the server, the destinations, then the start.
"""

from oslo_log import log as logging
from oslo_utils import excutils
import webob.exc

from nova.api.openstack import api_version_request
from nova.api.openstack import common
from nova.api.openstack import wsgi
from nova.compute import api as compute
from nova.compute import instance_actions
from nova.compute import task_states
from nova.compute import vm_states
import nova.conf
from nova import context as nova_context
from nova import exception
from nova import objects
from nova import policy
from nova import servicegroup

from nova_multidest.api import policies
from nova_multidest.api import schemas
from nova_multidest.api import views
from nova_multidest.conductor import rpcapi as conductor_rpcapi
from nova_multidest import exceptions
from nova_multidest import vocabulary

CONF = nova.conf.CONF
LOG = logging.getLogger(__name__)

# The action's body has the shape of os-migrateLive from 2.25 on
# (block_migration "auto", no disk_over_commit), and following it uses
# what Nova offers from there: force complete (2.22), the server's
# in-progress migrations (2.23) and abort (2.24).
MIN_MICROVERSION = vocabulary.ACTION_MICROVERSION

_STATE_HINTS = {
    'vm_state': 'only an ACTIVE server can be live migrated.',
    'task_state': 'wait until that task has finished.',
    'launched_at': 'the server has never run; boot it first.',
}


# The status of a refusal naming several bad destinations: the first of
# these that one of them gets.
_SEVERITY = (webob.exc.HTTPBadRequest, webob.exc.HTTPNotFound,
             webob.exc.HTTPConflict)


# Nova's own live migration checks (nova.compute.api.API.live_migrate), on
# Nova's compute API object, except that a paused server is refused: its
# destinations could not tell a running guest from a paused one.
@compute.block_shares_not_supported()
@compute.block_extended_resource_request
@compute.block_port_accelerators()
@compute.reject_vdpa_instances(
    instance_actions.LIVE_MIGRATION,
    until=compute.MIN_COMPUTE_VDPA_HOTPLUG_LIVE_MIGRATION)
@compute.block_accelerators()
@compute.reject_legacy_vtpm_live_migration
@compute.reject_mem_enc_instances(instance_actions.LIVE_MIGRATION)
@compute.check_instance_lock
@compute.check_instance_state(vm_state=[vm_states.ACTIVE])
def check_instance(compute_api, context, instance):
    if vocabulary.group_in_progress(instance.system_metadata):
        raise exception.InstanceInvalidState(
            attr='task_state', state='multi-destination migration',
            instance_uuid=instance.uuid, method='live_migrate_multi')
    in_progress = objects.MigrationList.get_in_progress_by_instance(
        context, instance.uuid)
    if in_progress:
        raise exception.InstanceInvalidState(
            attr='task_state', state='%s migration %s' % (
                in_progress[0].migration_type, in_progress[0].status),
            instance_uuid=instance.uuid, method='live_migrate_multi')


class MigrateLiveMultiController(wsgi.Controller):
    """Live-migrate a server to several destination hosts at once."""

    def __init__(self):
        super().__init__()
        self.compute_api = compute.API()
        self.host_api = compute.HostAPI()
        self.servicegroup_api = servicegroup.API()
        self.conductor_api = conductor_rpcapi.ConductorAPI()

    @wsgi.response(202)
    @wsgi.expected_errors((400, 403, 404, 409, 503))
    @wsgi.action(vocabulary.SERVER_ACTION)
    def _migrate_live_multi(self, req, id, body):
        context = req.environ['nova.context']
        check_microversion(req)
        try:
            args = schemas.validate(body, CONF.multidest.max_destinations)
        except exceptions.InvalidMigrationRequest as error:
            raise webob.exc.HTTPBadRequest(explanation=error.message)

        instance = common.get_instance(
            self.compute_api, context, id,
            expected_attrs=['flavor', 'numa_topology'])
        self._authorize(context, instance, args['destinations'])
        self._check_instance(context, instance, id)
        check_extra_specs(instance, args)
        if args['destinations']:
            self._check_destinations(context, instance, args['destinations'])
        else:
            args['count'] = args['count'] or default_count(instance)

        self._start(context, instance, args)
        LOG.info('Multi-destination live migration requested: '
                 'destinations %s, count %s', args['destinations'],
                 args['count'], instance=instance)
        return views.accepted(server_url(req), instance, args,
                              context.request_id)

    @staticmethod
    def _authorize(context, instance, destinations):
        policies.register(_nova_enforcer())
        rule = (policies.MIGRATE_LIVE_MULTI_HOST if destinations
                else policies.MIGRATE_LIVE_MULTI)
        try:
            context.can(rule, target={'project_id': instance.project_id})
        except exception.Forbidden as error:
            raise webob.exc.HTTPForbidden(explanation=error.format_message())

    def _check_instance(self, context, instance, server_id):
        try:
            check_instance(self.compute_api, context, instance)
        except exception.InstanceIsLocked as error:
            raise webob.exc.HTTPConflict(explanation=(
                '%s: unlock it first (openstack server unlock).' %
                error.format_message()))
        except exception.InstanceInvalidState as error:
            if vocabulary.group_in_progress(instance.system_metadata):
                raise webob.exc.HTTPConflict(
                    explanation=group_in_progress_message(context, instance))
            raise webob.exc.HTTPConflict(
                explanation=invalid_state_message(error, server_id))
        except exception.NotSupported as error:
            raise webob.exc.HTTPConflict(explanation=(
                '%s This server cannot be live migrated.' %
                error.format_message()))
        except exception.Invalid as error:
            raise webob.exc.HTTPBadRequest(
                explanation=error.format_message())

    def _check_destinations(self, context, instance, destinations):
        """Refuse, naming each, hosts that cannot be destinations.

        Nova would accept most of them and fail later; here the answer
        comes before anything changes. The status is that of the worst
        problem: the request's own (400), then unknown hosts (404), then
        hosts in a state that may change (409).
        """
        problems = [problem for problem in (
            self._destination_problem(context, instance, host)
            for host in destinations) if problem]
        if not problems:
            return
        status = min(problems, key=lambda p: _SEVERITY.index(p[0]))[0]
        raise status(explanation=' '.join(message for _, message in problems))

    def _destination_problem(self, context, instance, host):
        if host == instance.host:
            return (webob.exc.HTTPBadRequest,
                    'Destination %s is the host the server runs on; name '
                    'only other hosts.' % host)
        services = self.host_api.service_get_all(
            context, filters={'host': host}, all_cells=True)
        computes = [s for s in services if s.binary == 'nova-compute']
        if not computes:
            if services:
                return (webob.exc.HTTPBadRequest,
                        'Destination %s is not a compute host: it runs %s.'
                        % (host, ', '.join(sorted(s.binary
                                                  for s in services))))
            return (webob.exc.HTTPNotFound,
                    'Compute host %s could not be found; check the name '
                    'with "openstack compute service list".' % host)
        service = computes[0]
        state = self._unusable_state(service)
        if state is None and not self._runs_our_driver(context, host):
            state = ('it does not run the multi-destination driver '
                     '(compute_driver = multidest.MultiDestLibvirtDriver)')
        if state is None:
            return None
        return (webob.exc.HTTPConflict,
                'Destination %s cannot be used: %s.' % (host, state))

    def _unusable_state(self, service):
        host = service.host
        if service.forced_down:
            return ('its compute service is forced down (openstack '
                    'compute service set --up %s nova-compute)' % host)
        if service.disabled:
            return ('its compute service is disabled (%s; openstack '
                    'compute service set --enable %s nova-compute)' % (
                        service.disabled_reason or 'no reason given', host))
        if not self.servicegroup_api.service_is_up(service):
            return ('its compute service is down (last report %s)' %
                    (service.last_seen_up or service.created_at))
        return None

    @staticmethod
    def _runs_our_driver(context, host):
        try:
            mapping = objects.HostMapping.get_by_host(context, host)
            with nova_context.target_cell(
                    context, mapping.cell_mapping) as cell_context:
                nodes = objects.ComputeNodeList.get_all_by_host(
                    cell_context, host)
        except (exception.HostMappingNotFound,
                exception.ComputeHostNotFound):
            return False
        return all(vocabulary.COMPUTE_STATS_KEY in (node.stats or {})
                   for node in nodes)

    def _start(self, context, instance, args):
        try:
            instance.task_state = task_states.MIGRATING
            instance.save(expected_task_state=[None])
        except exception.UnexpectedTaskStateError as error:
            raise webob.exc.HTTPConflict(explanation=(
                'Another operation on server %s started meanwhile (%s); '
                'retry when it has finished.' % (
                    instance.uuid, error.format_message())))
        try:
            objects.InstanceAction.action_start(
                context, instance.uuid, instance_actions.LIVE_MIGRATION,
                want_result=False)
            self.conductor_api.live_migrate_multi(
                context, instance, destinations=args['destinations'],
                count=args['count'],
                block_migration=args['block_migration'],
                warm_up=args['warm_up'])
        except exceptions.NoConductorListening as error:
            instance.task_state = None
            instance.save(expected_task_state=[task_states.MIGRATING])
            raise webob.exc.HTTPServiceUnavailable(explanation=error.message)
        except Exception:
            with excutils.save_and_reraise_exception():
                instance.task_state = None
                instance.save(expected_task_state=[task_states.MIGRATING])


def check_extra_specs(instance, args):
    """Refuse a request that would use an invalid flavor extra spec."""
    problems = vocabulary.invalid_extra_specs(
        instance.flavor.extra_specs,
        default_count_used=not (args['destinations'] or args['count']))
    if problems:
        key, value, allowed = problems[0]
        raise webob.exc.HTTPBadRequest(explanation=str(
            exceptions.InvalidFlavorExtraSpec(
                flavor_name=instance.flavor.name,
                flavor_id=instance.flavor.flavorid,
                instance_uuid=instance.uuid, key=key,
                value=schemas.shown(value), allowed=allowed)))


def check_microversion(req):
    """Refuse a microversion older than the action, saying which to send.

    Nova answers an action its microversion does not know with 400
    ("There is no such action"); this one says what to do instead.
    """
    wanted = api_version_request.APIVersionRequest(MIN_MICROVERSION)
    asked = req.api_version_request
    if asked < wanted:
        raise webob.exc.HTTPBadRequest(explanation=(
            '%s needs compute API microversion %s or later; this request '
            'asked for %s. Send the header "OpenStack-API-Version: compute '
            '%s" (openstack --os-compute-api-version %s).' % (
                vocabulary.SERVER_ACTION, MIN_MICROVERSION,
                asked.get_string(), MIN_MICROVERSION, MIN_MICROVERSION)))


def server_url(req):
    """The server's URL as the caller wrote it (with any project id)."""
    return req.path_url.rstrip('/').rsplit('/', 1)[0]


def default_count(instance):
    return vocabulary.flavor_destination_count(
        instance.flavor.extra_specs, CONF.multidest.default_destinations,
        CONF.multidest.max_destinations)


def group_in_progress_message(context, instance):
    """Which operation runs, and how to follow or stop it."""
    actions = objects.InstanceActionList.get_by_instance_uuid(
        context, instance.uuid, limit=1)
    request = ' (request %s)' % actions[0].request_id if actions else ''
    return ('Server %s is already being live migrated to several '
            'destinations%s. Follow it with "openstack server migration '
            'list --server %s"; abort it with "openstack server migration '
            'abort" once its migrations are running.' % (
                instance.uuid, request, instance.uuid))


def invalid_state_message(error, server_id):
    attr = error.kwargs.get('attr')
    state = error.kwargs.get('state')
    return ("Cannot live migrate server %s to several destinations while its "
            "%s is %s: %s" % (server_id, attr, state,
                              _STATE_HINTS.get(attr, 'retry later.')))


def _nova_enforcer():
    # nova.policy has no public accessor that leaves CONF alone
    # (get_enforcer re-parses it), so initialise and take its enforcer.
    policy.init()
    return policy._ENFORCER
