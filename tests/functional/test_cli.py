"""The real ``openstack`` command against nova-api with our filter.

The harness serves nova-api in-process only (wsgi-intercept), so the same
WSGI application is also served on a loopback port for the client, which
runs as a subprocess exactly as an admin runs it.
"""

import os
import subprocess
import sys
import threading
from wsgiref import simple_server

import fixtures

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


class CliTestBase(test_api.MultiDestApiTestBase):

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


class TestCliRequests(CliTestBase):
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
