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

"""What every lab scenario shares: the running lab, seen from outside.

The tier runs against the lab that ``tools/run test lab`` (or ``tools/run
lab up``) started. Assertions use what an operator has: the ``openstack``
command and its exit code, ``virsh`` against each host's own libvirtd, the
Placement API and Nova's database.
"""

import json
import os
import signal
import subprocess
import time

import fixtures
import testtools

from nova_multidest import vocabulary
from tools.lab import cloud as cloud_mod
from tools.lab import layout
from tools.lab import libvirtd
from tools.lab import resources

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CLI_TIMEOUT = 600
BOOT_TIMEOUT = 300
MIGRATION_TIMEOUT = 600
GUEST_TIMEOUT = 60
POLL_INTERVAL = 0.5


def poll(predicate, timeout, what):
    """Until ``predicate`` returns something true.

    A predicate that sees the awaited state can no longer come raises
    AssertionError itself, saying why, instead of letting the poll run out.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError('%s: not within %ss' % (what, timeout))
        time.sleep(POLL_INTERVAL)


class LabTestCase(testtools.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.lab = layout.Lab(TOP)
        cls.cloud = cloud_mod.Cloud(cls.lab)
        down = [name for name, running in cls.cloud.status().items()
                if not running]
        if down:
            raise RuntimeError(
                'lab %s is not up (%s stopped): run the tier with '
                '"tools/run test lab", which starts it, or start it with '
                '"tools/run lab up"' % (cls.lab.id, ', '.join(down)))
        cls.cloud.write_configs()

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(CLI_TIMEOUT * 2, gentle=True))

    # -- the openstack command ---------------------------------------------

    def openstack(self, *args, user='admin', check=True, timeout=CLI_TIMEOUT):
        env = dict(os.environ)
        env.update(self.cloud.env(user))
        result = subprocess.run(
            [self.lab.tool('openstack')] + [str(arg) for arg in args],
            capture_output=True, text=True, env=env, timeout=timeout)
        if check and result.returncode:
            self.fail('openstack %s exited %d:\n%s%s' % (
                ' '.join(map(str, args)), result.returncode, result.stdout,
                result.stderr))
        return result

    def openstack_json(self, *args, **kwargs):
        return json.loads(self.openstack(*args, '-f', 'json',
                                         **kwargs).stdout)

    def boot(self, name='vm', host=None):
        """Boot the lab's guest; deleted again at cleanup."""
        args = ['server', 'create', '--image', resources.IMAGE, '--flavor',
                resources.FLAVOR, '--nic', 'none', '--wait']
        if host:
            args += ['--os-compute-api-version', '2.74', '--host', host]
        server = self.openstack_json(*args, name, timeout=BOOT_TIMEOUT)
        self.addCleanup(self.delete_server, server['id'])
        self.assertEqual('ACTIVE', server['status'], server)
        return server

    def delete_server(self, server_id):
        self.openstack('server', 'delete', '--wait', server_id, check=False)
        for host in self.lab.hosts:
            poll(lambda: server_id not in self.domain_uuids(host.name),
                 GUEST_TIMEOUT, 'domain of %s removed from %s'
                 % (server_id, host.name))

    def start_migration(self, server_id, *options):
        """``server migrate --multi-destination`` without --wait."""
        result = self.openstack('server', 'migrate', '--multi-destination',
                                *options, server_id)
        self.assertIn('accepted', result.stdout)
        return result

    def wait_streaming(self, server_id, count, before=()):
        """Until ``count`` destinations receive the server's memory.

        ``count`` destinations were asked for. The conductor records their
        migrations one after the other, so fewer rows than ``count`` only
        mean it is not done yet; this fails at once, with every status,
        when one of the migrations started after ``before`` (uuids) has
        ended, so that ``count`` can no longer stream.
        """
        def streaming():
            rows = [dict(zip(('uuid', 'dest', 'status', 'memory'), row))
                    for row in self.sql(
                        "SELECT uuid, dest_compute, status, memory_processed "
                        "FROM migrations WHERE instance_uuid = '%s' AND "
                        "deleted = 0 ORDER BY id" % server_id)
                    if row[0] not in before]
            live = [row for row in rows if row['status'] not in
                    vocabulary.MigrationStatus.NOVA_FINAL]
            if len(live) < len(rows):
                raise AssertionError(
                    '%d destinations of %s streaming: impossible, the '
                    'migrations are %s' % (count, server_id, ', '.join(
                        '%(dest)s %(status)s' % row for row in rows)))
            streams = [row['dest'] for row in live
                       if row['status'] == 'running' and
                       row['memory'].isdigit() and int(row['memory'])]
            return streams if len(streams) >= count else None
        return poll(streaming, MIGRATION_TIMEOUT,
                    '%d destinations of %s streaming' % (count, server_id))

    def wait_done(self, server_id):
        """Until the server has no task and every migration is final.

        Fails at once when the server goes to ERROR.
        """
        def done():
            server = self.show(server_id)
            if server['status'] == 'ERROR':
                raise AssertionError('server %s went to ERROR: %s; '
                                     'migrations %s' % (
                                         server_id, server.get('fault'),
                                         self.migration_statuses(server_id)))
            return server['OS-EXT-STS:task_state'] is None and all(
                m['status'] in vocabulary.MigrationStatus.NOVA_FINAL
                for m in self.migrations(server_id)) and server
        return poll(done, MIGRATION_TIMEOUT,
                    'migration of %s over' % server_id)

    def migration_statuses(self, server_id):
        """{destination: status} of the server's migrations, from the DB."""
        return {m['dest']: m['status'] for m in self.migrations(server_id)}

    def wait_migration_final(self, server_id, host):
        """Until the migration of ``server_id`` to ``host`` is final."""
        return poll(
            lambda: self.migration_statuses(server_id).get(host) in
            vocabulary.MigrationStatus.NOVA_FINAL and
            self.migration_statuses(server_id)[host],
            MIGRATION_TIMEOUT, 'migration of %s to %s final'
            % (server_id, host))

    def force_complete(self, server_id, host):
        """``server migration force complete`` of one destination's id."""
        self.openstack('--os-compute-api-version', '2.22', 'server',
                       'migration', 'force', 'complete', server_id,
                       self.migration_id(server_id, host))

    def abort(self, server_id, host):
        """``server migration abort`` of one destination's id."""
        self.openstack('--os-compute-api-version', '2.24', 'server',
                       'migration', 'abort', server_id,
                       self.migration_id(server_id, host))

    def migration_id(self, server_id, host):
        """Id of the running migration of ``server_id`` to ``host``."""
        rows = self.sql(
            "SELECT id FROM migrations WHERE instance_uuid = '%s' AND "
            "dest_compute = '%s' AND deleted = 0 ORDER BY id DESC LIMIT 1"
            % (server_id, host))
        return rows[0][0]

    def action_details(self, server_id, action):
        """Everything the server's last ``action`` records, as text."""
        actions = [a for a in self.openstack_json(
            '--os-compute-api-version', '2.84', 'server', 'event', 'list',
            server_id) if a['Action'] == action]
        if not actions:
            return ''
        return json.dumps(self.openstack_json(
            '--os-compute-api-version', '2.84', 'server', 'event', 'show',
            server_id, actions[0]['Request ID']))

    def show(self, server_id):
        return self.openstack_json('server', 'show', server_id)

    # -- virsh on each host ------------------------------------------------

    def virsh(self, host, *args, check=True):
        result = subprocess.run(
            ['virsh', '-c', libvirtd.uri(self.lab.libvirt_dir(host))] +
            list(args), capture_output=True, text=True, timeout=60)
        if check and result.returncode:
            self.fail('virsh %s on %s exited %d: %s' % (
                ' '.join(args), host, result.returncode, result.stderr))
        return result.stdout

    def domain_uuids(self, host, state='--all'):
        return set(self.virsh(host, 'list', state, '--uuid').split())

    def running_copies(self, server_id):
        """Hosts whose libvirtd runs a domain of the server."""
        return sorted(
            host.name for host in self.lab.hosts
            if server_id in self.domain_uuids(host.name, '--state-running'))

    def qemu_pid(self, host, server_id):
        """PID of the QEMU that runs the server's domain on ``host``."""
        name = self.virsh(host, 'domname', server_id).strip()
        pids = libvirtd.qemu_pids(self.lab.libvirt_dir(host), [name])
        self.assertEqual(1, len(pids), 'QEMU of %s on %s' % (name, host))
        return pids.pop()

    def kill_qemu(self, host, server_id):
        os.kill(self.qemu_pid(host, server_id), signal.SIGKILL)

    def qemu_processes(self, server_id):
        """PIDs of every QEMU process on this machine running the server.

        Found in /proc, not through libvirt: a QEMU that some libvirtd lost
        track of counts too.
        """
        found = []
        for entry in os.listdir('/proc'):
            if not entry.isdigit():
                continue
            try:
                with open('/proc/%s/cmdline' % entry, 'rb') as f:
                    argv = f.read().split(b'\0')
            except OSError:
                continue
            if (argv and os.path.basename(argv[0]).startswith(
                    b'qemu-system') and
                    any(server_id.encode() in arg for arg in argv)):
                found.append(int(entry))
        return found

    def domain_state(self, host, server_id):
        return self.virsh(host, 'domstate', server_id).strip()

    # -- the lab's network -------------------------------------------------

    def throttle(self, host, rate='4mbit'):
        """Slow ``host``'s outgoing traffic; undone at cleanup at the latest.

        A real network condition, set with tc on the host's own interface:
        a stream from that host takes seconds instead of a fraction of one,
        so a fault can land while it is in flight.
        """
        self.tc(host, 'qdisc', 'replace', 'dev', 'eth0', 'root', 'tbf',
                'rate', rate, 'burst', '32kb', 'latency', '5s')
        self.addCleanup(self.unthrottle, host)

    def unthrottle(self, host):
        self.tc(host, 'qdisc', 'del', 'dev', 'eth0', 'root', check=False)

    def tc(self, host, *args, check=True):
        subprocess.run(['ip', 'netns', 'exec', self.lab.host(host).netns,
                        'tc'] + list(args), capture_output=True, check=check,
                       timeout=60)

    # -- the lab's processes -----------------------------------------------

    def kill_service(self, name):
        """SIGKILL a lab service and its workers; until all are gone."""
        process = self.cloud.procs[name]
        self.assertTrue(process.kill(), name)
        poll(lambda: not process.group_alive(), GUEST_TIMEOUT,
             '%s and its workers gone' % name)

    def restart(self, starter, *args):
        """Start a lab process again with the lab's own start function."""
        process, ready = starter(*args)
        process.wait_ready(ready, cloud_mod.START_TIMEOUT)

    def guest_counter(self, host, server_id):
        """The counter the guest writes into its own memory."""
        output = self.virsh(host, 'qemu-monitor-command', server_id, '--hmp',
                            'xp /1wx 0x%x' % resources.COUNTER_ADDRESS)
        return int(output.split(':')[1].split()[0], 16)

    def assert_guest_runs(self, host, server_id):
        first = self.guest_counter(host, server_id)
        poll(lambda: self.guest_counter(host, server_id) != first,
             GUEST_TIMEOUT, 'the guest of %s advances its counter on %s'
             % (server_id, host))

    # -- Placement and the database ---------------------------------------

    def allocations(self, consumer):
        """{resource provider name: resources} held by ``consumer``."""
        session = self.cloud.session('admin')
        response = session.get(
            '/allocations/%s' % consumer,
            endpoint_filter={'service_type': 'placement'},
            headers={'OpenStack-API-Version': 'placement 1.28'})
        names = {}
        for rp_uuid, allocation in response.json()['allocations'].items():
            provider = session.get(
                '/resource_providers/%s' % rp_uuid,
                endpoint_filter={'service_type': 'placement'},
                headers={'OpenStack-API-Version': 'placement 1.28'}).json()
            names[provider['name']] = allocation['resources']
        return names

    def sql(self, query):
        result = subprocess.run(
            ['mariadb', '--no-defaults', '--socket=' +
             self.lab.path('mysql.sock'), '-u', 'root', '--batch',
             '--skip-column-names', 'nova', '-e', query],
            capture_output=True, text=True, timeout=60, check=True)
        return [line.split('\t') for line in result.stdout.splitlines()]

    def migrations(self, server_id):
        """Nova's Migration records of the server, from the database."""
        rows = self.sql(
            "SELECT uuid, source_compute, dest_compute, status FROM "
            "migrations WHERE instance_uuid = '%s' AND deleted = 0 "
            "ORDER BY id" % server_id)
        return [dict(zip(('uuid', 'source', 'dest', 'status'), row))
                for row in rows]

    def assert_only_on(self, server_id, host):
        """The invariants: one copy, on ``host``, nothing left elsewhere."""
        server = self.show(server_id)
        self.assertEqual('ACTIVE', server['status'])
        self.assertIsNone(server['OS-EXT-STS:task_state'])
        self.assertEqual(host, server['OS-EXT-SRV-ATTR:host'])
        for node in self.lab.hosts:
            expected = {server_id} if node.name == host else set()
            self.assertEqual(expected, self.domain_uuids(node.name) &
                             {server_id}, node.name)
        self.assertEqual([host], self.running_copies(server_id))
        self.assertEqual(1, len(self.qemu_processes(server_id)),
                         'QEMU processes of %s' % server_id)
        self.assertEqual([host], list(self.allocations(server_id)))
        for migration in self.migrations(server_id):
            self.assertIn(migration['status'],
                          vocabulary.MigrationStatus.NOVA_FINAL,
                          migration)
            self.assertEqual({}, self.allocations(migration['uuid']),
                             migration)
        self.assert_guest_runs(host, server_id)
