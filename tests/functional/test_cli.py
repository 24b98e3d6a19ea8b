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

"""The real ``openstack`` command against nova-api with our filter.

The harness serves nova-api in-process only (wsgi-intercept), so the same
WSGI application is also served on a loopback port for the client, which
runs as a subprocess exactly as an admin runs it.
"""

import json
import os
import subprocess
import sys
import threading
from wsgiref import simple_server

import fixtures

from nova_multidest import vocabulary
from tests.functional import base
from tests.functional import test_api

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir,
                                    os.pardir))
OPENSTACK = os.path.join(os.path.dirname(sys.executable), 'openstack')
CLI_TIMEOUT = 300


class _QuietHandler(simple_server.WSGIRequestHandler):

    def log_message(self, format, *args):
        pass


class LoopbackApi(fixtures.Fixture):
    """Serve a WSGI app on 127.0.0.1 as an authenticated admin.

    The harness stubs keystonemiddleware; the identity headers it reads
    are set here, standing in for the token validation a cloud does.
    """

    def __init__(self, app, project_id, user='admin',
                 roles=('reader', 'member', 'admin')):
        super().__init__()
        self.app = app
        self.identity = {'HTTP_X_AUTH_USER': user, 'HTTP_X_USER_ID': user,
                         'HTTP_X_AUTH_PROJECT_ID': project_id,
                         'HTTP_X_ROLES': ','.join(roles)}

    def _setUp(self):
        server = simple_server.make_server(
            '127.0.0.1', 0, self._authenticated, handler_class=_QuietHandler)
        thread = threading.Thread(target=server.serve_forever,
                                  name='loopback-nova-api', daemon=True)
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        self.endpoint = 'http://127.0.0.1:%d/v2.1' % server.server_port

    def _authenticated(self, environ, start_response):
        environ.update(self.identity)
        return self.app(environ, start_response)


class CliMixin(object):
    """Serves the harness's nova-api on loopback for the real client."""

    def setUp(self):
        super().setUp()
        self.loopback = self.useFixture(LoopbackApi(
            self.api_fixture.app(), self.api_fixture.project_id))

    def openstack(self, *argv):
        """Run the openstack command; return (exit code, stdout, stderr)."""
        env = {key: value for key, value in os.environ.items()
               if not key.startswith('OS_')}
        # Entry points resolve through sys.path: the working tree's hook.
        env['PYTHONPATH'] = REPO
        result = subprocess.run(
            [OPENSTACK, '--os-auth-type', 'none',
             '--os-endpoint', self.loopback.endpoint] + list(argv),
            env=env, cwd=REPO, capture_output=True, text=True,
            timeout=CLI_TIMEOUT)
        return result.returncode, result.stdout, result.stderr


class TestCliRequests(CliMixin, test_api.MultiDestApiTestBase):
    """What the command sends and how it reports the API's answer."""

    def setUp(self):
        super().setUp()
        self.server = self.boot_server(host=self.hostnames[0])

    def test_multi_destination_accepted(self):
        code, out, err = self.openstack(
            'server', 'migrate', '--multi-destination',
            '--destination', self.hostnames[1],
            '--destination', self.hostnames[2], self.server['id'])
        self.assertEqual(0, code, err)
        self.assertIn('accepted: destinations %s, %s' % tuple(
            self.hostnames[1:]), out)
        self.assertEqual(
            'migrating',
            self.admin_api.get_server(
                self.server['id'])['OS-EXT-STS:task_state'])

    def test_refusal_exits_non_zero_with_the_reason(self):
        code, out, err = self.openstack(
            'server', 'migrate', '--multi-destination',
            '--destination', 'nosuchhost', self.server['id'])
        self.assertEqual(1, code)
        self.assertIn('refused (HTTP 404): Compute host nosuchhost could '
                      'not be found', err)
        self.assertIsNone(self.admin_api.get_server(
            self.server['id'])['OS-EXT-STS:task_state'])

    def test_without_the_flag_nova_migrates_as_before(self):
        code, out, err = self.openstack(
            '--os-compute-api-version', '2.30', 'server', 'migrate',
            '--live-migration', '--host', self.hostnames[1], '--wait',
            self.server['id'])
        self.assertEqual(0, code, err)
        self.assert_invariants(self.server, self.hostnames[1])


class TestCliEndToEnd(CliMixin, base.MultiDestMigrationTestBase):
    """From ``openstack server migrate`` to a winner.

    The whole control plane runs: our filter, nova-multidest-conductor and
    the computes' endpoints over the fake hypervisor extension.
    """

    COMPUTES = 3

    def setUp(self):
        super().setUp()
        self.source = self.hostnames[0]
        self.destinations = self.hostnames[1:]
        self.server = self.boot_server(
            host=self.source, networks=[{'port': self.neutron.port_1['id']}])

    def migrate(self, *options):
        return self.openstack('server', 'migrate', '--multi-destination',
                              *(options + (self.server['id'],)))

    def test_wait_for_a_winner(self):
        code, out, err = self.migrate(
            '--destination', self.destinations[0],
            '--destination', self.destinations[1], '--wait')

        self.assertEqual(0, code, err)
        winner = self.admin_api.get_server(
            self.server['id'])['OS-EXT-SRV-ATTR:host']
        self.assertIn(winner, self.destinations)
        self.assertIn(
            'Server %s now runs on %s.' % (self.server['id'], winner), out)
        for host in self.destinations:
            self.assertRegex(out, r'%s +\[[#.]{30}\] +\d+%%' % host)
        self.assertRegex(out, r'%s +\[#{30}\] 100%%  completed' % winner)
        self.assert_invariants(self.server, winner)

    def test_scheduled_destinations(self):
        code, out, err = self.migrate('--destinations', '2', '--wait')

        self.assertEqual(0, code, err)
        self.assertIn('2 destinations chosen by the scheduler', out)
        winner = self.admin_api.get_server(
            self.server['id'])['OS-EXT-SRV-ATTR:host']
        self.assertIn(winner, self.destinations)
        self.assert_invariants(self.server, winner)

    def test_every_destination_fails(self):
        for host in self.destinations:
            self.inject_fault(host, vocabulary.DestinationPhase.STREAM)

        code, out, err = self.migrate('--destinations', '2', '--wait')

        self.assertEqual(1, code, out)
        self.assertIn('failed; it keeps running on %s' % self.source, err)
        for host in self.destinations:
            self.assertIn('Destination %s failed: stream' % host, err)
        # One short reason per destination, not the group's summary too.
        self.assertNotIn('Every destination failed', err)
        self.assertLess(len(err.strip()), 450, err)
        self.assert_invariants(self.server, self.source)

    def test_warm_up_then_force_complete(self):
        code, out, err = self.migrate('--warm-up', '--destinations', '2')
        self.assertEqual(0, code, err)
        migrations = base.wait_until(
            self._running_migrations, timeout=60,
            message='the warm-up never streamed to both destinations')
        for migration in migrations:
            # By uuid: OSC 10.5 swaps the arguments of get_server_migration
            # when given a numeric id.
            code, out, err = self.openstack(
                '--os-compute-api-version', '2.80', 'server', 'migration',
                'show', self.server['id'], migration['uuid'], '-f', 'json')
            self.assertEqual(0, code, err)
            shown = json.loads(out)
            self.assertEqual('running', shown['Status'])
            self.assertIn(shown['Dest Compute'], self.destinations)

        code, out, err = self.openstack(
            '--os-compute-api-version', '2.24', 'server', 'migration',
            'force', 'complete', self.server['id'], str(migrations[0]['id']))

        self.assertEqual(0, code, err)
        result = self.wait_for_group_end(self.server)
        self.assertEqual('completed', result['result'])
        self.assert_invariants(self.server, result['host'])

    def _running_migrations(self):
        # Listed through the API: OSC's "server migration list" also needs
        # an identity v3 endpoint, which the keystone-less harness lacks.
        migrations = self.admin_api.api_get(
            '/servers/%s/migrations' % self.server['id']).body['migrations']
        if (len(migrations) == 2 and
                all(m['status'] == 'running' for m in migrations)):
            return migrations
        return None
