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

import io
import os
import subprocess
import sys
import textwrap
from unittest import mock

import fixtures
from openstackclient.compute.v2 import server as server_commands
from osc_lib import exceptions
import testtools

from nova_multidest.osc import hook

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
SERVER = 'e7a4e3f6-1d1f-4bd5-9a4f-3c1bd1c8b0aa'
REQUEST = 'req-8f3c'


class FakeResponse:

    def __init__(self, status, body):
        self.status_code = status
        self._body = body
        self.headers = {'content-type': 'application/json'}
        self.reason = None
        self.content = b'x'
        self.text = str(body)

    def json(self):
        return self._body


def server(status='ACTIVE', task_state=None, host='c1', fault=None,
           ram_mb=None):
    return mock.Mock(id=SERVER, status=status, task_state=task_state,
                     compute_host=host, fault=fault,
                     flavor={'ram': ram_mb} if ram_mb else {})


def migration(mid, dest, status, total=100, remaining=100):
    return {'id': mid, 'dest_compute': dest, 'status': status,
            'memory_total_bytes': total, 'memory_remaining_bytes': remaining,
            'memory_processed_bytes': total - remaining}


class FakeCompute:
    """Replays a scripted compute API.

    Server states and migration lists come back in order, the last one
    repeating.
    """

    def __init__(self, servers, migration_lists, action=None,
                 post_response=None):
        self.servers = list(servers)
        self.migration_lists = list(migration_lists)
        self.action = action
        self.posted = []
        self.post_response = post_response or FakeResponse(
            202, {'multidest_migration': {
                'server_uuid': SERVER, 'destinations': None, 'count': 2,
                'request_id': REQUEST}})

    @staticmethod
    def _next(items):
        return items.pop(0) if len(items) > 1 else items[0]

    def find_server(self, name, ignore_missing):
        return server()

    def get_server(self, server_id):
        return self._next(self.servers)

    def post(self, url, json, microversion=None):
        assert microversion == '2.25', microversion
        self.posted.append((url, json))
        return self.post_response

    def get(self, url, params=None, microversion=None):
        if url == '/os-migrations':
            assert params == {'instance_uuid': SERVER,
                              'migration_type': 'live-migration'}
            migrations = self.current = self._next(self.migration_lists)
            if migrations is None:
                return FakeResponse(403, {'forbidden': {'message': 'no'}})
            return FakeResponse(200, {'migrations': [
                {k: v for k, v in m.items()
                 if not k.startswith(('memory_', 'disk_'))}
                for m in migrations]})
        if url == '/servers/%s/migrations' % SERVER:
            return FakeResponse(200, {'migrations': [
                m for m in self.current
                if m['status'] in ('preparing', 'running')]})
        assert url == '/servers/%s/os-instance-actions/%s' % (
            SERVER, REQUEST)
        if self.action is None:
            return FakeResponse(404, {'itemNotFound': {'message': 'no'}})
        return FakeResponse(200, {'instanceAction': self.action})


class HookTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.app = mock.Mock(stdout=io.StringIO())
        self.command = server_commands.MigrateServer(self.app, None)
        self.hook = hook.MultiDestinationMigrateHook(self.command)
        self.parser = self.command.get_parser('openstack server migrate')
        self.hook.get_parser(self.parser)
        self.useFixture(fixtures.MockPatchObject(hook.time, 'sleep'))

    def parse(self, *argv):
        return self.parser.parse_args(list(argv) + ['vm1'])


class TestParser(HookTestCase):

    def test_options_join_those_of_server_migrate(self):
        args = self.parse('--multi-destination', '--destination', 'c2',
                          '--destination', 'c3', '--warm-up', '--wait',
                          '--block-migration')
        self.assertTrue(args.multi_destination)
        self.assertEqual(['c2', 'c3'], args.multidest_hosts)
        self.assertTrue(args.multidest_warm_up)
        self.assertTrue(args.wait)
        self.assertTrue(args.block_migration)

    def test_count(self):
        args = self.parse('--multi-destination', '--destinations', '3')
        self.assertEqual(3, args.multidest_count)
        self.assertEqual({'count': 3, 'block_migration': 'auto',
                          'warm_up': False}, hook.request_body(args))

    def test_request_body_with_hosts(self):
        args = self.parse('--multi-destination', '--destination', 'c2',
                          '--shared-migration')
        self.assertEqual({'destinations': ['c2'], 'block_migration': False,
                          'warm_up': False}, hook.request_body(args))


class TestBefore(HookTestCase):

    def test_without_multi_destination_nothing_changes(self):
        args = self.parse('--live-migration', '--host', 'c2', '--wait')
        self.assertIs(args, self.hook.before(args))
        self.assertNotIn('take_action', vars(self.command))

    def test_our_options_need_the_flag(self):
        for argv, named in ((('--destination', 'c2'), '--destination '),
                            (('--destinations', '2'), '--destinations '),
                            (('--destinations', '0'), '--destinations '),
                            (('--warm-up',), '--warm-up '),
                            (('--warm-up', '--destinations', '0'),
                             '--destinations and --warm-up need')):
            error = self.assertRaises(exceptions.CommandError,
                                      self.hook.before, self.parse(*argv))
            self.assertIn(named, str(error))
            self.assertIn('need --multi-destination', str(error).replace(
                'needs', 'need'))

    def test_count_at_least_one(self):
        for count in ('0', '-2'):
            error = self.assertRaises(
                exceptions.CommandError, self.hook.before,
                self.parse('--multi-destination', '--destinations', count))
            self.assertIn('--destinations must be at least 1 (got %s)' %
                          count, str(error))

    def test_host_names(self):
        for host, fragment in (
                ('h' * 10000, 'a host name of 10000 characters is too long'),
                ('bad host', "'bad host' is not a host name"),
                ('', "'' is not a host name"),
                ('h/' * 300, 'too long')):
            error = self.assertRaises(
                exceptions.CommandError, self.hook.before,
                self.parse('--multi-destination', '--destination', 'c2',
                           '--destination', host))
            self.assertIn(fragment, str(error))
            self.assertLess(len(str(error)), 200)

    def test_flag_replaces_the_action(self):
        args = self.parse('--multi-destination')
        self.hook.before(args)
        self.assertEqual(self.hook.take_action, self.command.take_action)

    def test_clashing_options(self):
        for argv in (('--host', 'c2'), ('--disk-overcommit',),
                     ('--destination', 'c2', '--destinations', '2')):
            error = self.assertRaises(
                exceptions.CommandError, self.hook.before,
                self.parse('--multi-destination', *argv))
            self.assertIn('--', str(error))


class TestTakeAction(HookTestCase):

    def run_hook(self, compute, *argv):
        self.app.client_manager.compute = compute
        args = self.parse('--multi-destination', *argv)
        self.hook.before(args)
        return self.command.take_action(args)

    def test_posts_action_without_waiting(self):
        compute = FakeCompute([server()], [[]])
        self.run_hook(compute, '--destinations', '2', '--warm-up')
        self.assertEqual(
            [('/servers/%s/action' % SERVER,
              {'os-migrateLive-multi': {'count': 2, 'warm_up': True,
                                        'block_migration': 'auto'}})],
            compute.posted)
        self.assertIn('2 destinations chosen by the scheduler (request '
                      'req-8f3c)', self.app.stdout.getvalue())

    def test_refusal_is_reported(self):
        compute = FakeCompute([server()], [[]], post_response=FakeResponse(
            409, {'conflictingRequest': {'code': 409,
                                         'message': 'server is locked'}}))
        error = self.assertRaises(exceptions.CommandError,
                                  self.run_hook, compute)
        self.assertIn('refused (HTTP 409): server is locked', str(error))

    def test_wait_until_a_winner(self):
        old = migration(7, 'c9', 'completed')
        compute = FakeCompute(
            [server(task_state='migrating'), server(task_state='migrating'),
             server(host='c3')],
            [[old],
             [old, migration(8, 'c2', 'preparing'),
              migration(9, 'c3', 'running', remaining=40)],
             [old, migration(8, 'c2', 'cancelled'),
              migration(9, 'c3', 'completed', remaining=0)]])
        self.run_hook(compute, '--wait')
        out = self.app.stdout.getvalue()
        self.assertIn('c3 [##################............]  60%  running',
                      out)
        self.assertIn('c3 [##############################] 100%  completed',
                      out)
        self.assertNotIn('c9', out)
        self.assertIn('now runs on c3', out)

    def test_wait_counts_the_disk_bytes(self):
        copying = dict(migration(9, 'c3', 'running', remaining=100),
                       disk_total_bytes=300 << 20,
                       disk_processed_bytes=100 << 20,
                       disk_remaining_bytes=200 << 20)
        compute = FakeCompute(
            [server(task_state='migrating'), server(host='c3')],
            [[], [copying], [migration(9, 'c3', 'completed', remaining=0)]])
        self.run_hook(compute, '--wait')
        self.assertIn('c3 [#########.....................]  33%  running  '
                      'disks 100/300 MiB', self.app.stdout.getvalue())

    def test_wait_leaves_room_for_memory_while_disks_copy(self):
        # No memory counters yet: the hypervisor copies the disks first.
        disks_copied = {'id': 9, 'dest_compute': 'c3', 'status': 'running',
                        'disk_total_bytes': 300 << 20,
                        'disk_remaining_bytes': 0}
        compute = FakeCompute(
            [server(task_state='migrating'), server(host='c3')],
            [[], [disks_copied],
             [migration(9, 'c3', 'completed', remaining=0)]])
        compute.find_server = lambda name, ignore_missing: server(
            ram_mb=100)
        self.run_hook(compute, '--wait')
        self.assertIn('c3 [######################........]  75%  running  '
                      'disks 300/300 MiB', self.app.stdout.getvalue())

    def test_wait_outlasts_the_cleared_task_state(self):
        # The winner's compute clears task_state before the conductor
        # records its migration completed (seen in the lab).
        compute = FakeCompute(
            [server(task_state='migrating'), server(host='c3')],
            [[],
             [migration(8, 'c2', 'running'), migration(9, 'c3', 'running')],
             [migration(8, 'c2', 'cancelled'),
              migration(9, 'c3', 'running', remaining=0)],
             [migration(8, 'c2', 'cancelled'),
              migration(9, 'c3', 'completed', remaining=0)]])
        self.run_hook(compute, '--wait')
        self.assertIn('now runs on c3', self.app.stdout.getvalue())

    def test_wait_when_every_destination_failed(self):
        action = {'message': 'Error', 'events': [
            {'event': 'multidest_destination_c2', 'result': 'Error',
             'details': 'c2: no space'},
            {'event': 'multidest_live_migration', 'result': 'Error',
             'details': 'Every destination failed (c2: no space)',
             'traceback': '  File "task.py", line 9, in _all_failed\n'},
            {'event': 'compute_pre_live_migration', 'result': 'Success'}]}
        compute = FakeCompute(
            [server(task_state='migrating'), server()],
            [[], [migration(8, 'c2', 'failed')]], action=action)
        error = self.assertRaises(exceptions.CommandError, self.run_hook,
                                  compute, '--wait')
        self.assertEqual(
            'Multi-destination live migration of server %s failed; it '
            'keeps running on c1: c2: no space' % SERVER, str(error))

    def test_wait_failure_is_short(self):
        long_reason = 'Destination c%d failed: claim: ' + 'x' * 400
        action = {'message': 'Error', 'events': [
            {'event': 'multidest_destination_c%d' % i, 'result': 'Error',
             'details': long_reason % i} for i in (2, 3)] + [
            {'event': 'multidest_live_migration', 'result': 'Error',
             'details': 'Every destination failed (%s)' % long_reason}]}
        compute = FakeCompute(
            [server(task_state='migrating'), server()],
            [[], [migration(8, 'c2', 'failed'),
                  migration(9, 'c3', 'failed')]],
            action=action)
        error = self.assertRaises(exceptions.CommandError, self.run_hook,
                                  compute, '--wait')
        self.assertIn('Destination c2 failed: claim: xxx', str(error))
        self.assertIn('...; Destination c3 failed', str(error))
        self.assertNotIn('Every destination failed', str(error))
        self.assertLess(len(str(error)), 450)

    def test_wait_failure_of_the_group_alone(self):
        action = {'message': 'Error', 'events': [
            {'event': 'multidest_live_migration', 'result': 'Error',
             'details': 'Flavor m1 has an invalid extra spec'}]}
        compute = FakeCompute([server(task_state='migrating'), server()],
                              [[], []], action=action)
        error = self.assertRaises(exceptions.CommandError, self.run_hook,
                                  compute, '--wait')
        self.assertIn('c1: Flavor m1 has an invalid extra spec', str(error))

    def test_wait_without_access_to_migrations(self):
        """A non-admin allowed the action by policy sees the outcome."""
        action = {'message': None, 'events': [
            {'event': 'multidest_live_migration', 'result': 'Success'}]}
        compute = FakeCompute(
            [server(task_state='migrating', host=None), server(host=None)],
            [None], action=action)
        self.run_hook(compute, '--wait')
        self.assertIn('now runs on its new host', self.app.stdout.getvalue())

        action['events'][0].update(result='Error', details='no host')
        compute = FakeCompute(
            [server(task_state='migrating', host=None), server(host=None)],
            [None], action=action)
        error = self.assertRaises(exceptions.CommandError, self.run_hook,
                                  compute, '--wait')
        self.assertIn('keeps running on its source host: no host',
                      str(error))

    def test_wait_when_the_server_went_to_error(self):
        compute = FakeCompute(
            [server(status='ERROR', fault={'message': 'source crashed'})],
            [[]])
        error = self.assertRaises(exceptions.CommandError, self.run_hook,
                                  compute, '--wait')
        self.assertIn('source crashed', str(error))


class TestCliOnlyInstall(testtools.TestCase):

    def test_hook_loads_without_nova_or_libvirt(self):
        """An admin's laptop has the client and our package, nothing else."""
        script = textwrap.dedent('''
            import sys

            class Blocker:
                def find_spec(self, name, path=None, target=None):
                    if name.split('.')[0] in ('nova', 'libvirt'):
                        raise ImportError('blocked: ' + name)

            sys.meta_path.insert(0, Blocker())
            from openstackclient.compute.v2 import server
            from nova_multidest.osc import hook
            from unittest import mock
            command = server.MigrateServer(mock.Mock(), None)
            parser = command.get_parser('openstack server migrate')
            hook.MultiDestinationMigrateHook(command).get_parser(parser)
            parser.parse_args(['--multi-destination', 'vm1'])
            assert not [m for m in sys.modules
                        if m.split('.')[0] in ('nova', 'libvirt')]
            print('ok')
        ''')
        result = subprocess.run([sys.executable, '-c', script], cwd=REPO,
                                capture_output=True, text=True)
        self.assertEqual('ok\n', result.stdout, result.stderr)

    def test_openstack_command_shows_the_options(self):
        """The entry point hooks the real command (working tree first)."""
        openstack = os.path.join(os.path.dirname(sys.executable), 'openstack')
        result = subprocess.run(
            [openstack, 'server', 'migrate', '--help'], cwd=REPO,
            env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
            text=True)
        self.assertEqual(0, result.returncode, result.stderr)
        for option in ('--multi-destination', '--destination <host>',
                       '--destinations <count>', '--warm-up', '--host'):
            self.assertIn(option, result.stdout)
