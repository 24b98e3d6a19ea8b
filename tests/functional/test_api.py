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

"""The os-migrateLive-multi action through nova-api with our api-paste.ini.

Nova's real API runs the pipeline of etc/api-paste.ini, so these tests
prove the sample operators copy: the filter sits after keystonecontext,
serves our action, and leaves the rest of the API to Nova.
"""

import os

from nova_multidest.api import policies
from nova_multidest import vocabulary
from tests.functional import base

API_PASTE_INI = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir,
                             'etc', 'api-paste.ini')


class MultiDestApiTestBase(base.MultiDestTestBase):
    """Nova with our paste pipeline."""

    COMPUTES = 3

    def api_paste_config(self):
        return os.path.abspath(API_PASTE_INI)

    def migrate(self, server_id, args, status, api=None):
        """POST the action; return (status, body) after checking status."""
        api = api or self.admin_api
        response = api.api_post('/servers/%s/action' % server_id,
                                {vocabulary.SERVER_ACTION: args},
                                check_response_status=[status])
        return response.body

    def assert_refused(self, server_id, args, status, *fragments, api=None):
        before = self.admin_api.get_server(server_id)
        body = self.migrate(server_id, args, status, api=api)
        [fault] = body.values()
        self.assertEqual(status, fault['code'])
        for fragment in fragments:
            self.assertIn(fragment, fault['message'])
        after = self.admin_api.get_server(server_id)
        for key in ('status', 'OS-EXT-STS:task_state',
                    'OS-EXT-SRV-ATTR:host'):
            self.assertEqual(before[key], after[key])
        self.assertEqual([], list(self.get_migrations(server_id)))
        return fault['message']


class TestRefusals(MultiDestApiTestBase):
    """Bad input changes nothing and says what to fix."""

    def setUp(self):
        super().setUp()
        self.server = self.boot_server(host=self.hostnames[0])

    def test_bad_bodies(self):
        for args, fragment in (
                ({'host': 'compute2'}, '"host" was unexpected'),
                ({'destinations': ['compute2', 'compute2']},
                 'Name each destination host once'),
                ({'destinations': ['compute2'], 'count': 2},
                 "either 'destinations' or 'count'"),
                ({'count': 99}, 'at most 4 destinations'),
                ({'block_migration': 'maybe'}, 'true, false or "auto"'),
                ({'warm_up': 'yes'}, "field 'os-migrateLive-multi/warm_up'")):
            self.assert_refused(self.server['id'], args, 400, fragment)

    def test_limit_follows_configuration(self):
        self.flags(max_destinations=2, group='multidest')
        self.assert_refused(self.server['id'], {'count': 3}, 400,
                            'at most 2 destinations')

    def test_non_admin(self):
        member = self.api_fixture.api
        member.microversion = self.microversion
        self.assert_refused(self.server['id'], {}, 403,
                            policies.MIGRATE_LIVE_MULTI, api=member)
        self.assert_refused(self.server['id'], {'destinations': ['compute2']},
                            403, policies.MIGRATE_LIVE_MULTI_HOST, api=member)

    def test_unknown_server(self):
        body = self.migrate(self.new_uuid(), {}, 404)
        self.assertIn('could not be found', body['itemNotFound']['message'])

    def test_unknown_destination(self):
        self.assert_refused(self.server['id'],
                            {'destinations': ['compute2', 'nosuchhost']},
                            404, 'Compute host nosuchhost could not be found')

    def test_source_as_destination(self):
        self.assert_refused(self.server['id'],
                            {'destinations': [self.hostnames[0]]}, 400,
                            'is the host the server runs on')

    def test_stopped_server(self):
        self.admin_api.post_server_action(self.server['id'], {'os-stop': None})
        self._wait_for_state_change(self.server, 'SHUTOFF')
        self.assert_refused(self.server['id'], {}, 409, 'vm_state is stopped',
                            'only an ACTIVE server')

    def test_locked_server(self):
        """A lock binds users, not admins, as for every Nova action."""
        self.policy.set_rules({policies.MIGRATE_LIVE_MULTI: 'role:member'},
                              overwrite=False)
        member = self.api_fixture.api
        member.microversion = self.microversion
        member.post_server_action(self.server['id'], {'lock': None})
        self.assert_refused(self.server['id'], {}, 409, 'is locked',
                            'unlock it first', api=member)

    def test_task_in_progress(self):
        instance = self.get_instance(self.server['id'])
        instance.task_state = 'rebooting'
        instance.save()
        self.assert_refused(self.server['id'], {}, 409,
                            'task_state is rebooting')

    def test_flavor_extra_specs_are_validated(self):
        flavor_id = self._create_flavor()
        self.admin_api.microversion = '2.86'
        for spec, message in (
                ({'multidest:destinations': '17'}, 'greater than the max'),
                ({'multidest:destinations': 'two'}, 'not a valid integer'),
                ({'multidest:topology': 'ring'}, 'is not one of'),
                ({'multidest:destination': '2'}, 'not appear to be a valid')):
            response = self.admin_api.api_post(
                '/flavors/%s/os-extra_specs' % flavor_id,
                {'extra_specs': spec}, check_response_status=[400])
            self.assertIn(message,
                          response.body['badRequest']['message'])
        self.admin_api.api_post(
            '/flavors/%s/os-extra_specs' % flavor_id,
            {'extra_specs': {'multidest:destinations': '3',
                             'multidest:topology': 'chain'}},
            check_response_status=[200])


class TestAccepted(MultiDestApiTestBase):
    """The API's part of an accepted request, with no conductor running."""

    def test_accepted_records_the_start(self):
        server = self.boot_server(host=self.hostnames[0])
        body = self.migrate(server['id'],
                            {'destinations': self.hostnames[1:],
                             'warm_up': True}, 202)

        accepted = body['multidest_migration']
        self.assertEqual(server['id'], accepted['server_uuid'])
        self.assertEqual(self.hostnames[1:], accepted['destinations'])
        self.assertEqual(2, accepted['count'])
        self.assertTrue(accepted['warm_up'])
        links = {link['rel']: link['href'] for link in accepted['links']}
        self.assertTrue(links['migrations'].endswith(
            '/v2.1/servers/%s/migrations' % server['id']))
        action = self.admin_api.get_instance_action_details(
            server['id'], accepted['request_id'])
        self.assertEqual('live-migration', action['action'])
        self.assertEqual(
            'migrating',
            self.admin_api.get_server(server['id'])['OS-EXT-STS:task_state'])
        # A second request finds the first one in progress.
        self.assert_refused(server['id'], {}, 409, 'task_state is migrating')

    def test_nova_actions_still_work(self):
        server = self.boot_server(host=self.hostnames[0])
        self._live_migrate(server, host=self.hostnames[1])
        self.assert_invariants(server, self.hostnames[1])
