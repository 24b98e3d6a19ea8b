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

import contextlib
import datetime
from unittest import mock

import fixtures
from oslo_config import cfg
from oslo_policy import policy as oslo_policy
from oslo_serialization import jsonutils
import testtools
import webob

from nova.compute import task_states
from nova.compute import vm_states
from nova import context as nova_context
from nova import exception
from nova import objects
from nova import policies as nova_policies

from nova_multidest.api import filter as multidest_filter
from nova_multidest.api import policies
from nova_multidest import conf as multidest_conf
from nova_multidest import exceptions
from nova_multidest import vocabulary

SERVER = '0b7c9a3e-5b1e-4f55-8f0e-3e6f4f2d6a10'
PROJECT = '6f70656e737461636b20697320636f6f'
GROUP_ACTIVE = {vocabulary.SYSMETA_ACTIVE: vocabulary.SYSMETA_ACTIVE_VALUE}

objects.register_all()


class Downstream:
    """Nova's compute app as the filter sees it: records what reaches it."""

    def __init__(self):
        self.requests = []

    @webob.dec.wsgify
    def __call__(self, req):
        self.requests.append((req.method, req.path_info, req.body))
        return webob.Response(status=299)


def make_instance(**changes):
    instance = objects.Instance(
        uuid=SERVER, project_id=PROJECT, host='c1', node='c1',
        vm_state=vm_states.ACTIVE, task_state=None, locked=False,
        launched_at=datetime.datetime(2026, 1, 1), system_metadata={},
        flavor=objects.Flavor(extra_specs={}), info_cache=None,
        image_ref='')
    for name, value in changes.items():
        setattr(instance, name, value)
    instance.obj_reset_changes()
    instance.save = mock.Mock()
    return instance


@contextlib.contextmanager
def _target_cell(context, cell_mapping):
    yield context


class FilterTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        multidest_conf.register_opts(cfg.CONF)
        self.downstream = Downstream()
        with mock.patch('nova.compute.api.API'), mock.patch(
                'nova.compute.api.HostAPI'), mock.patch(
                'nova.servicegroup.API'), mock.patch(
                'nova_multidest.conductor.rpcapi.ConductorAPI'):
            self.app = multidest_filter.MultiDestinationFilter(
                self.downstream)
        self.services = {}
        self.app.controller.host_api.service_get_all.side_effect = (
            lambda ctxt, filters, all_cells: self.services.get(
                filters['host'], []))
        self.app.controller.servicegroup_api.service_is_up.side_effect = (
            lambda service: service.last_seen_up is not None)
        for host in ('c2', 'c3'):
            self.add_compute(host)
        self.compute_api = self.app.compute_api
        self.conductor = self.app.conductor_api
        self.compute_api.network_api.instance_has_extended_resource_request \
            .return_value = False
        self.instance = make_instance()
        self.compute_api.get.side_effect = lambda *a, **k: self.instance

        conf = cfg.ConfigOpts()
        conf([])
        self.enforcer = oslo_policy.Enforcer(conf)
        self.enforcer.register_defaults(nova_policies.list_rules())
        self.useFixture(fixtures.MockPatch(
            'nova_multidest.api.action._nova_enforcer',
            return_value=self.enforcer))
        self.useFixture(fixtures.MockPatch(
            'nova.policy.authorize', side_effect=self._authorize))
        self.useFixture(fixtures.MockPatch(
            'nova.compute.api.instance_has_share', return_value=[]))
        self.in_progress = self.useFixture(fixtures.MockPatch(
            'nova.objects.MigrationList.get_in_progress_by_instance',
            return_value=[])).mock
        self.compute_nodes = self.useFixture(fixtures.MockPatch(
            'nova.objects.ComputeNodeList.get_all_by_host',
            side_effect=lambda ctxt, host: self.nodes[host])).mock
        self.useFixture(fixtures.MockPatch(
            'nova.objects.HostMapping.get_by_host'))
        self.useFixture(fixtures.MockPatch(
            'nova.context.target_cell', side_effect=_target_cell))
        self.action_start = self.useFixture(fixtures.MockPatch(
            'nova.objects.InstanceAction.action_start')).mock
        self.useFixture(fixtures.MockPatch(
            'nova.objects.InstanceActionList.get_by_instance_uuid',
            return_value=[objects.InstanceAction(request_id='req-7')]))

    def add_compute(self, host, driver=True, binary='nova-compute',
                    **state):
        service = objects.Service(
            host=host, binary=binary, forced_down=False, disabled=False,
            disabled_reason=None,
            last_seen_up=datetime.datetime(2026, 1, 1),
            created_at=datetime.datetime(2026, 1, 1))
        for name, value in state.items():
            setattr(service, name, value)
        self.services[host] = [service]
        stats = {vocabulary.COMPUTE_STATS_KEY: '1.0'} if driver else {}
        self.nodes = getattr(self, 'nodes', {})
        self.nodes[host] = [objects.ComputeNode(host=host, stats=stats)]

    def _authorize(self, context, action, target, do_raise=True, exc=None):
        return self.enforcer.authorize(
            action, target, context, do_raise=do_raise,
            exc=exc or exception.PolicyNotAuthorized, action=action)

    def context(self, *roles):
        roles = roles or ('reader', 'member', 'admin')
        return nova_context.RequestContext(
            'user-1', PROJECT, roles=list(roles),
            is_admin='admin' in roles, request_id='req-42')

    def request(self, body, path='/servers/%s/action' % SERVER,
                method='POST', context=None, headers=None):
        req = webob.Request.blank(path, method=method,
                                  base_url='http://api/v2.1',
                                  headers=headers or {
                                      'OpenStack-API-Version':
                                          'compute 2.25'})
        if body is not None:
            req.body = (body if isinstance(body, bytes)
                        else jsonutils.dump_as_bytes(body))
            req.content_type = 'application/json'
        req.environ['nova.context'] = context or self.context()
        return req.get_response(self.app)

    def migrate(self, context=None, **args):
        return self.request({'os-migrateLive-multi': args}, context=context)

    def assert_fault(self, response, status, *fragments):
        self.assertEqual(status, response.status_int, response.text)
        [fault] = response.json.values()
        for fragment in fragments:
            self.assertIn(fragment, fault['message'])
        self.assertFalse(self.conductor.live_migrate_multi.called)
        self.assertFalse(self.instance.save.called)
        self.assertEqual([], self.downstream.requests)


class TestRouting(FilterTestCase):

    def assert_passed(self, response, method, path, body):
        self.assertEqual(299, response.status_int)
        self.assertEqual([(method, path, body)], self.downstream.requests)
        self.assertFalse(self.compute_api.get.called)

    def test_other_server_action_reaches_nova_unchanged(self):
        body = jsonutils.dump_as_bytes({'os-migrateLive': {'host': None}})
        self.assert_passed(self.request(body), 'POST',
                           '/servers/%s/action' % SERVER, body)

    def test_other_requests_reach_nova(self):
        self.assert_passed(self.request(None, path='/servers', method='GET'),
                           'GET', '/servers', b'')
        self.downstream.requests = []
        self.assert_passed(
            self.request(b'{not json', path='/servers/x/action'),
            'POST', '/servers/x/action', b'{not json')

    def test_our_action_stays_here(self):
        response = self.migrate(count=2)
        self.assertEqual(202, response.status_int, response.text)
        self.assertEqual([], self.downstream.requests)

    def test_project_id_in_url(self):
        response = self.request({'os-migrateLive-multi': {}},
                                path='/%s/servers/%s/action' % (PROJECT,
                                                                SERVER))
        self.assertEqual(202, response.status_int, response.text)
        self.assertEqual(
            'http://api/v2.1/%s/servers/%s/migrations' % (PROJECT, SERVER),
            response.json['multidest_migration']['links'][0]['href'])

    def test_project_id_of_another_project(self):
        other = 'abcdef0123456789abcdef0123456789'
        response = self.request({'os-migrateLive-multi': {}},
                                path='/%s/servers/%s/action' % (other,
                                                                SERVER))
        self.assert_fault(response, 400, 'Malformed request URL',
                          other, PROJECT)

    def test_microversion_headers_as_nova_checks_them(self):
        for headers, status, fragment in (
                ({'OpenStack-API-Version': 'compute 9.99'}, 406,
                 'Version 9.99 is not supported by the API'),
                ({'OpenStack-API-Version': 'compute two'}, 400,
                 'API Version String two is of invalid format'),
                ({'X-OpenStack-Nova-API-Version': '1.1'}, 406,
                 'Version 1.1 is not supported'),
                ({'OpenStack-API-Version': 'compute 2.24'}, 400,
                 'needs compute API microversion 2.25 or later'),
                ({}, 400, 'this request asked for 2.1')):
            response = self.request({'os-migrateLive-multi': {}},
                                    headers=headers or {'X-Nothing': ''})
            self.assert_fault(response, status, fragment)

    def test_answer_carries_the_microversion_headers(self):
        response = self.request(
            {'os-migrateLive-multi': {}},
            headers={'X-OpenStack-Nova-API-Version': '2.30'})
        self.assertEqual(202, response.status_int, response.text)
        self.assertEqual('compute 2.30',
                         response.headers['OpenStack-API-Version'])

    def test_content_type(self):
        req = webob.Request.blank(
            '/servers/%s/action' % SERVER, method='POST',
            base_url='http://api/v2.1',
            headers={'OpenStack-API-Version': 'compute 2.25'})
        req.body = b'{"os-migrateLive-multi": {}}'
        req.content_type = 'application/xml'
        req.environ['nova.context'] = self.context()
        self.assert_fault(req.get_response(self.app), 415,
                          'Unsupported Content-Type')

    def test_huge_migration_id(self):
        for method in ('GET', 'DELETE'):
            response = self.request(
                None, method=method,
                path='/servers/%s/migrations/%d' % (SERVER, 10 ** 30))
            self.assert_fault(response, 404, 'could not be found',
                              'migration ids are at most 2147483647')


class TestMigrateLiveMulti(FilterTestCase):

    def test_accepted_with_destinations(self):
        response = self.migrate(destinations=['c2', 'c3'], warm_up=True)

        self.assertEqual(202, response.status_int, response.text)
        self.assertEqual(task_states.MIGRATING, self.instance.task_state)
        self.instance.save.assert_called_once_with(expected_task_state=[None])
        self.action_start.assert_called_once_with(
            mock.ANY, SERVER, 'live-migration', want_result=False)
        self.conductor.live_migrate_multi.assert_called_once_with(
            mock.ANY, self.instance, destinations=['c2', 'c3'], count=None,
            block_migration='auto', warm_up=True)
        body = response.json['multidest_migration']
        self.assertEqual(
            {'server_uuid': SERVER, 'destinations': ['c2', 'c3'], 'count': 2,
             'block_migration': 'auto', 'warm_up': True,
             'request_id': 'req-42'},
            {k: v for k, v in body.items() if k != 'links'})
        self.assertEqual(
            [{'rel': 'migrations',
              'href': 'http://api/v2.1/servers/%s/migrations' % SERVER},
             {'rel': 'action',
              'href': 'http://api/v2.1/servers/%s/os-instance-actions/'
                      'req-42' % SERVER}],
            body['links'])

    def test_count_defaults_to_flavor_then_configuration(self):
        self.migrate()
        self.assertEqual(
            cfg.CONF.multidest.default_destinations,
            self.conductor.live_migrate_multi.call_args.kwargs['count'])

        self.conductor.reset_mock()
        self.instance.task_state = None
        self.instance.flavor.extra_specs['multidest:destinations'] = '3'
        self.migrate()
        self.assertEqual(
            3, self.conductor.live_migrate_multi.call_args.kwargs['count'])

        self.conductor.reset_mock()
        self.instance.task_state = None
        self.instance.flavor.extra_specs['multidest:destinations'] = '16'
        self.migrate()
        self.assertEqual(
            cfg.CONF.multidest.max_destinations,
            self.conductor.live_migrate_multi.call_args.kwargs['count'])

    def test_bad_body(self):
        self.assert_fault(self.migrate(count=0), 400, "field 'os-migrateLive"
                          "-multi/count'")
        self.assertFalse(self.compute_api.get.called)

    def test_unknown_server(self):
        self.compute_api.get.side_effect = exception.InstanceNotFound(
            instance_id=SERVER)
        self.assert_fault(self.migrate(), 404, SERVER)

    def test_not_admin(self):
        self.assert_fault(self.migrate(context=self.context('member')), 403,
                          policies.MIGRATE_LIVE_MULTI)
        self.assert_fault(
            self.migrate(context=self.context('member'), destinations=['c2']),
            403, policies.MIGRATE_LIVE_MULTI_HOST)

    def test_policy_override(self):
        self.enforcer.set_rules(oslo_policy.Rules.from_dict(
            {policies.MIGRATE_LIVE_MULTI: 'role:member'}), overwrite=False)
        response = self.migrate(context=self.context('member'))
        self.assertEqual(202, response.status_int, response.text)

    def test_locked_server(self):
        self.enforcer.set_rules(oslo_policy.Rules.from_dict(
            {policies.MIGRATE_LIVE_MULTI: 'role:member'}), overwrite=False)
        self.instance.locked = True
        self.assert_fault(self.migrate(context=self.context('member')), 409,
                          'is locked', 'unlock it first')

    def test_states(self):
        for changes, fragment in (
                ({'vm_state': vm_states.STOPPED}, 'vm_state is stopped'),
                ({'vm_state': vm_states.PAUSED}, 'vm_state is paused'),
                ({'task_state': task_states.MIGRATING},
                 'task_state is migrating'),
                ({'system_metadata': GROUP_ACTIVE},
                 'already being live migrated to several destinations '
                 '(request req-7)'),
                ({'system_metadata': GROUP_ACTIVE,
                  'task_state': task_states.MIGRATING},
                 'migration list --server %s' % SERVER)):
            self.instance = make_instance(**changes)
            self.assert_fault(self.migrate(), 409, fragment)

    def test_already_migrating(self):
        self.in_progress.return_value = [objects.Migration(
            migration_type='live-migration', status='running')]
        self.assert_fault(self.migrate(), 409,
                          'task_state is live-migration migration running')

    def test_last_result_is_no_group(self):
        self.instance = make_instance(
            system_metadata={vocabulary.SYSMETA_LAST_RESULT: 'completed'})
        self.assertEqual(202, self.migrate().status_int)

    def test_unknown_destination(self):
        self.assert_fault(self.migrate(destinations=['c9']), 404,
                          'Compute host c9 could not be found')

    def test_unusable_destinations(self):
        self.add_compute('down', last_seen_up=None)
        self.add_compute('forced', forced_down=True)
        self.add_compute('off', disabled=True, disabled_reason='repairs')
        self.add_compute('plain', driver=False)
        self.add_compute('ctl', binary='nova-conductor')
        for host, status, fragment in (
                ('down', 409, 'its compute service is down'),
                ('forced', 409, 'its compute service is forced down'),
                ('off', 409, 'its compute service is disabled (repairs;'),
                ('plain', 409, 'does not run the multi-destination driver'),
                ('ctl', 400, 'is not a compute host: it runs '
                             'nova-conductor')):
            self.assert_fault(self.migrate(destinations=['c2', host]),
                              status, 'Destination %s' % host, fragment)

    def test_every_bad_destination_is_named(self):
        self.add_compute('forced', forced_down=True)
        response = self.migrate(destinations=['forced', 'c9', 'c2', 'c1'])
        self.assert_fault(response, 400, 'forced cannot be used',
                          'c9 could not be',
                          'c1 is the host the server runs on')
        self.assertNotIn('c2', response.json['badRequest']['message'])
        self.assert_fault(self.migrate(destinations=['forced', 'c9']), 404,
                          'forced', 'c9')

    def test_invalid_flavor_extra_specs(self):
        self.instance.flavor = objects.Flavor(
            name='m1.tiny', flavorid='42',
            extra_specs={'multidest:destinations': 'two'})
        self.assert_fault(self.migrate(), 400,
                          'Flavor m1.tiny (id 42) of server %s' % SERVER,
                          'multidest:destinations="two"',
                          'a whole number from 1 to 16')
        # Not used when the request gives the count.
        self.assertEqual(202, self.migrate(count=2).status_int)

    def test_source_as_destination(self):
        self.assert_fault(self.migrate(destinations=['c2', 'c1']), 400,
                          'Destination c1 is the host the server runs on')

    def test_task_state_race(self):
        self.instance.save.side_effect = exception.UnexpectedTaskStateError(
            instance_uuid=SERVER, expected=None, actual='migrating')
        response = self.migrate()
        self.assertEqual(409, response.status_int)
        self.assertIn('Another operation', response.text)
        self.assertFalse(self.conductor.live_migrate_multi.called)

    def test_failed_cast_restores_task_state(self):
        self.conductor.live_migrate_multi.side_effect = RuntimeError('bus')
        # Nova's 500 names its release, read from a configuration unit
        # tests do not load.
        self.useFixture(fixtures.MockPatch('nova.version.support_string',
                                           return_value=''))
        self.assertEqual(500, self.migrate().status_int)
        self.assertIsNone(self.instance.task_state)
        self.instance.save.assert_called_with(
            expected_task_state=[task_states.MIGRATING])

    def test_no_conductor_listening_is_503_and_restores_task_state(self):
        self.conductor.live_migrate_multi.side_effect = (
            exceptions.NoConductorListening(topic='md-topic'))
        response = self.migrate()
        self.assertEqual(503, response.status_int, response.text)
        [fault] = response.json.values()
        self.assertIn('No nova-multidest-conductor listens',
                      fault['message'])
        self.assertIn('Nothing was changed', fault['message'])
        self.assertIsNone(self.instance.task_state)
        self.instance.save.assert_called_with(
            expected_task_state=[task_states.MIGRATING])


class TestAbortGuard(FilterTestCase):

    def abort(self, status, group=True):
        self.instance = make_instance(
            system_metadata=GROUP_ACTIVE if group else {})
        self.useFixture(fixtures.MockPatch(
            'nova.objects.Migration.get_by_id_and_instance',
            return_value=objects.Migration(status=status)))
        return self.request(None, method='DELETE',
                            path='/servers/%s/migrations/5' % SERVER)

    def test_group_not_yet_streaming(self):
        response = self.abort('preparing')
        self.assertEqual(400, response.status_int)
        self.assertIn('once its status is running', response.text)
        self.assertEqual([], self.downstream.requests)

    def test_running_group_goes_to_nova(self):
        self.assertEqual(299, self.abort('running').status_int)

    def test_single_destination_migration_goes_to_nova(self):
        self.assertEqual(299, self.abort('preparing', group=False).status_int)
