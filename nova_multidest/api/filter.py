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
hands it to Nova's own ``wsgi.Resource`` (routed by Nova's own
``ProjectMapper``, so with or without a project id in the URL exactly as
Nova routes it); every other request goes to Nova untouched, except the
abort of a group's migration that Nova would drop silently and migration
ids no Migration record can have.
"""

import re

from oslo_log import log as logging
from oslo_serialization import jsonutils
import webob
import webob.dec
import webob.exc

from nova.api import openstack as nova_openstack
from nova.api.openstack import wsgi as os_wsgi
from nova.api import wsgi
from nova import exception
from nova import objects
from nova.policies import servers_migrations as sm_policies

from nova_multidest.api import action
from nova_multidest import vocabulary

LOG = logging.getLogger(__name__)

_MIGRATION_PATH = re.compile(r'^(?:/[^/]+)?/servers/(?P<server>[^/]+)'
                             r'/migrations/(?P<migration>\d+)'
                             r'(?P<action>/action)?/?$')
# Migration.id is a 32-bit signed integer column.
MAX_MIGRATION_ID = 2 ** 31 - 1


class MultiDestinationFilter(wsgi.Middleware):
    """Serve the multi-destination live migration action in nova-api."""

    def __init__(self, application):
        super().__init__(application)
        self.controller = action.MigrateLiveMultiController()
        self.resource = os_wsgi.Resource(self.controller)
        self.mapper = nova_openstack.ProjectMapper()
        self.mapper.create_route('/servers/{id}/action', 'POST',
                                 self.resource, 'action')

    @property
    def compute_api(self):
        return self.controller.compute_api

    @property
    def conductor_api(self):
        return self.controller.conductor_api

    @webob.dec.wsgify(RequestClass=os_wsgi.Request)
    def __call__(self, req):
        try:
            if req.method == 'POST' and self._our_action(req):
                match = self.mapper.routematch(environ=req.environ)
                if match is not None:
                    req.environ['wsgiorg.routing_args'] = ((), match[0])
                    return self.resource
            match = _MIGRATION_PATH.match(req.path_info)
            if match:
                self.migration_guard(req, match)
        except webob.exc.HTTPException as error:
            return os_wsgi.Fault(error)
        return self.application

    @staticmethod
    def _our_action(req):
        """True if the body names our action.

        Anything else, unparsable bodies included, is Nova's to answer.
        """
        if not req.body:
            return False
        try:
            body = jsonutils.loads(req.body)
        except ValueError:
            return False
        return isinstance(body, dict) and vocabulary.SERVER_ACTION in body

    def migration_guard(self, req, match):
        server_id = match.group('server')
        migration_id = int(match.group('migration'))
        if migration_id > MAX_MIGRATION_ID:
            # Nova's database cannot even be asked about it (500).
            raise webob.exc.HTTPNotFound(explanation=(
                'Migration %s of server %s could not be found: migration '
                'ids are at most %d; list them with "openstack server '
                'migration list --server %s".' % (
                    match.group('migration')[:20], server_id,
                    MAX_MIGRATION_ID, server_id)))
        if req.method == 'DELETE' and not match.group('action'):
            self.abort_guard(req, server_id, migration_id)

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


def filter_factory(global_conf, **local_conf):
    """Entry point of ``[filter:multidest]`` in api-paste.ini."""
    return MultiDestinationFilter
