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

"""nova-api paste filter serving multi-destination live migration.

Nova's router rejects server actions it does not know, so this filter,
placed after ``keystonecontext`` in the v2.1 pipeline, takes
``POST /servers/{id}/action`` with an ``os-migrateLive-multi`` body and
passes every other request to Nova untouched.
"""

import re

from oslo_log import log as logging
from oslo_serialization import jsonutils
from oslo_utils import excutils
import webob
import webob.dec
import webob.exc

from nova.api.openstack import common
from nova.api.openstack import wsgi as os_wsgi
from nova.api import wsgi
from nova.compute import api as compute
from nova.compute import instance_actions
from nova.compute import task_states
from nova.compute import vm_states
import nova.conf
from nova import exception
from nova import objects
from nova.policies import servers_migrations as sm_policies
from nova import policy

from nova_multidest.api import policies
from nova_multidest.api import schemas
from nova_multidest.api import views
from nova_multidest.conductor import rpcapi as conductor_rpcapi
from nova_multidest import exceptions
from nova_multidest import vocabulary

CONF = nova.conf.CONF
LOG = logging.getLogger(__name__)

# An optional leading project id segment keeps legacy endpoints working.
_ACTION_PATH = re.compile(r'^(?P<prefix>/[^/]+)?/servers/(?P<server>[^/]+)'
                          r'/action/?$')
_MIGRATION_PATH = re.compile(r'^(?:/[^/]+)?/servers/(?P<server>[^/]+)'
                             r'/migrations/(?P<migration>\d+)/?$')

_STATE_HINTS = {
    'vm_state': 'only an ACTIVE server can be live migrated.',
    'task_state': 'wait until that task has finished.',
    'launched_at': 'the server has never run; boot it first.',
}


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


class MultiDestinationFilter(wsgi.Middleware):
    """Serve the multi-destination live migration action in nova-api."""

    def __init__(self, application):
        super().__init__(application)
        self.compute_api = compute.API()
        self.conductor_api = conductor_rpcapi.ConductorAPI()

    @webob.dec.wsgify(RequestClass=os_wsgi.Request)
    def __call__(self, req):
        try:
            if req.method == 'POST':
                match = _ACTION_PATH.match(req.path_info)
                body = match and self._our_action(req)
                if body is not None:
                    return self.migrate_live_multi(
                        req, match.group('server'), body,
                        prefix=match.group('prefix') or '')
            elif req.method == 'DELETE':
                match = _MIGRATION_PATH.match(req.path_info)
                if match:
                    self.abort_guard(req, match.group('server'),
                                     int(match.group('migration')))
        except webob.exc.HTTPException as error:
            return os_wsgi.Fault(error)
        return self.application

    @staticmethod
    def _our_action(req):
        """The parsed body if it is our action, else None.

        Anything else, unparsable bodies included, is Nova's to answer.
        """
        if not req.body:
            return None
        try:
            body = jsonutils.loads(req.body)
        except ValueError:
            return None
        if isinstance(body, dict) and vocabulary.SERVER_ACTION in body:
            return body
        return None

    def migrate_live_multi(self, req, server_id, body, prefix=''):
        context = req.environ['nova.context']
        try:
            args = schemas.validate(body, CONF.multidest.max_destinations)
        except exceptions.InvalidMigrationRequest as error:
            raise webob.exc.HTTPBadRequest(explanation=error.message)

        instance = common.get_instance(
            self.compute_api, context, server_id,
            expected_attrs=['flavor', 'numa_topology'])
        self._authorize(context, instance, args['destinations'])
        self._check_instance(context, instance, server_id)
        if args['destinations']:
            self._check_destinations(context, instance, args['destinations'])
        else:
            args['count'] = args['count'] or default_count(instance)

        self._start(context, instance, args)
        LOG.info('Multi-destination live migration requested: '
                 'destinations %s, count %s', args['destinations'],
                 args['count'], instance=instance)
        return webob.Response(
            status=202, content_type='application/json', charset='UTF-8',
            json_body=views.accepted(req, prefix, instance, args,
                                     context.request_id))

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
            raise webob.exc.HTTPConflict(
                explanation=invalid_state_message(error, server_id))
        except exception.NotSupported as error:
            raise webob.exc.HTTPConflict(explanation=(
                '%s This server cannot be live migrated.' %
                error.format_message()))
        except exception.Invalid as error:
            raise webob.exc.HTTPBadRequest(
                explanation=error.format_message())

    @staticmethod
    def _check_destinations(context, instance, destinations):
        for host in destinations:
            if host == instance.host:
                raise webob.exc.HTTPBadRequest(explanation=(
                    'Destination %s is the host the server runs on; name '
                    'only other hosts.' % host))
            try:
                objects.ComputeNodeList.get_all_by_host(context, host)
            except exception.ComputeHostNotFound:
                raise webob.exc.HTTPNotFound(explanation=(
                    'Compute host %s could not be found; check the name '
                    'with "openstack compute service list".' % host))

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
        except Exception:
            with excutils.save_and_reraise_exception():
                instance.task_state = None
                instance.save(expected_task_state=[task_states.MIGRATING])

    def abort_guard(self, req, server_id, migration_id):
        """Refuse to abort a migration of a group not yet streaming.

        Nova would accept it (microversion 2.65 and later) and cast it to
        the source compute, which can only abort a running stream and
        would drop the request silently.
        """
        context = req.environ['nova.context']
        try:
            instance = self.compute_api.get(context, server_id)
            migration = objects.Migration.get_by_id_and_instance(
                context, migration_id, server_id)
        except (exception.InstanceNotFound,
                exception.MigrationNotFoundForInstance):
            return
        if not context.can(sm_policies.POLICY_ROOT % 'delete', fatal=False,
                           target={'project_id': instance.project_id}):
            return
        # Nova's source compute can abort only a running stream, or a
        # queued single-destination migration it holds itself.
        if (migration.status in vocabulary.MigrationStatus.NOT_YET_RUNNING
                and vocabulary.group_in_progress(instance.system_metadata)):
            raise webob.exc.HTTPBadRequest(explanation=(
                'Migration %d of server %s is %s: its destinations are '
                'still being prepared. Abort it once its status is '
                'running.' % (migration_id, server_id, migration.status)))


def default_count(instance):
    return vocabulary.flavor_destination_count(
        instance.flavor.extra_specs, CONF.multidest.default_destinations,
        CONF.multidest.max_destinations)


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


def filter_factory(global_conf, **local_conf):
    """Entry point of ``[filter:multidest]`` in api-paste.ini."""
    return MultiDestinationFilter
