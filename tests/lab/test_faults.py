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

"""Scenarios 4 to 8 and 10: real faults in the middle of a migration.

Each scenario starts a ``--warm-up`` migration, which keeps pre-copying to
every destination until ``server migration force complete``: the stream
stays in flight for as long as the scenario needs, so the fault is
injected once the database shows every destination receiving memory, not
after a guessed delay. Faults are real: SIGKILL of a destination's QEMU,
of a nova-compute or of nova-multidest-conductor, a RabbitMQ restart.

The scenarios share one server: each leaves it ACTIVE on exactly one host
with nothing left anywhere else (which it asserts), and the next one
migrates it from there. A scenario that finds it in any other state boots
a new one.
"""

import subprocess

from nova_multidest import vocabulary
from tools.lab import cloud as cloud_mod
from tools.lab import resources

from tests.lab import base

_SHARED = {}


class FaultTest(base.LabTestCase):

    @classmethod
    def tearDownClass(cls):
        server_id = _SHARED.pop('id', None)
        if server_id:
            env = dict(cls.cloud.env('admin'))
            subprocess.run([cls.lab.tool('openstack'), 'server', 'delete',
                            '--wait', server_id], env=env,
                           capture_output=True, timeout=base.CLI_TIMEOUT)
        super().tearDownClass()

    def server(self):
        """(id, host) of the shared server, ACTIVE on exactly one host."""
        server_id = _SHARED.get('id')
        if server_id:
            server = self.show(server_id)
            host = server['OS-EXT-SRV-ATTR:host']
            if (server['status'] == 'ACTIVE' and
                    server['OS-EXT-STS:task_state'] is None and
                    self.running_copies(server_id) == [host]):
                return server_id, host
            _SHARED.pop('id')
            self.delete_server(server_id)
        server = self.openstack_json(
            'server', 'create', '--image', resources.IMAGE, '--flavor',
            resources.FLAVOR, '--nic', 'none', '--wait', 'lab-faults',
            timeout=base.BOOT_TIMEOUT)
        self.assertEqual('ACTIVE', server['status'], server)
        _SHARED['id'] = server['id']
        return server['id'], server['OS-EXT-SRV-ATTR:host']

    def others(self, host):
        return [node.name for node in self.lab.hosts if node.name != host]

    def warm_up(self, server_id, source, destinations):
        """Start a warm-up migration; until every destination streams.

        The source's link is throttled until the fault or the switch-over,
        so that QEMU cannot finish pre-copy by itself, even if the guest
        gets too little CPU to dirty its memory, as on a loaded machine.
        """
        self.throttle(source)
        before = self.known(server_id)
        self.start_migration(server_id, '--warm-up', *[
            option for host in destinations
            for option in ('--destination', host)])
        self.wait_streaming(server_id, len(destinations), before)

    def switch_over(self, server_id, source, destination):
        """Force complete, then give the source its full link again."""
        self.force_complete(server_id, destination)
        self.unthrottle(source)

    def new_migrations(self, server_id, before):
        return [m for m in self.migrations(server_id)
                if m['uuid'] not in before]

    def known(self, server_id):
        return {m['uuid'] for m in self.migrations(server_id)}

    def assert_won(self, server_id, candidates, before):
        """The group ended with one winner among ``candidates``."""
        server = self.wait_done(server_id)
        winner = server['OS-EXT-SRV-ATTR:host']
        self.assertIn(winner, candidates)
        self.assert_only_on(server_id, winner)
        self.assertEqual(
            [winner], [m['dest'] for m in self.new_migrations(
                server_id, before) if m['status'] == 'completed'])
        return winner

    # -- scenario 4 ------------------------------------------------------

    def test_destination_qemu_killed_another_destination_wins(self):
        server_id, source = self.server()
        before = self.known(server_id)
        destinations = self.others(source)
        self.warm_up(server_id, source, destinations)
        victim = destinations[0]
        self.kill_qemu(victim, server_id)
        self.assertNotEqual('completed',
                            self.wait_migration_final(server_id, victim))
        self.switch_over(server_id, source, destinations[1])
        self.assert_won(server_id, destinations[1:], before)

    # -- scenario 5 ------------------------------------------------------

    def test_destination_compute_killed_and_restarted(self):
        server_id, source = self.server()
        before = self.known(server_id)
        destinations = self.others(source)[:2]
        self.warm_up(server_id, source, destinations)
        victim, survivor = destinations
        self.kill_service('%s-nova-compute' % victim)
        self.restart(self.cloud.start_compute, victim)
        self.switch_over(server_id, source, survivor)
        self.assert_won(server_id, destinations, before)

    def test_source_compute_killed_and_restarted(self):
        server_id, source = self.server()
        before = self.known(server_id)
        destinations = self.others(source)[:2]
        self.warm_up(server_id, source, destinations)
        self.kill_service('%s-nova-compute' % source)
        self.unthrottle(source)
        self.restart(self.cloud.start_compute, source)
        server = self.wait_done(server_id)
        host = server['OS-EXT-SRV-ATTR:host']
        self.assertIn(host, [source] + destinations)
        self.assert_only_on(server_id, host)
        self.assertTrue(self.new_migrations(server_id, before))

    # -- scenario 6 ------------------------------------------------------

    def test_conductor_killed_and_restarted(self):
        server_id, source = self.server()
        destinations = self.others(source)
        self.warm_up(server_id, source, destinations)
        self.kill_service(vocabulary.CONDUCTOR_BINARY)
        self.unthrottle(source)
        self.restart(self.cloud.start_controller_service,
                     vocabulary.CONDUCTOR_BINARY)
        server = self.wait_done(server_id)
        host = server['OS-EXT-SRV-ATTR:host']
        self.assertIn(host, [source] + destinations)
        self.assert_only_on(server_id, host)

    # -- scenario 7 ------------------------------------------------------

    def test_every_destination_fails_the_source_keeps_running(self):
        server_id, source = self.server()
        before = self.known(server_id)
        destinations = self.others(source)
        self.warm_up(server_id, source, destinations)
        for host in destinations:
            self.kill_qemu(host, server_id)
        self.unthrottle(source)

        def ended_running_on_source():
            self.assertEqual('running',
                             self.domain_state(source, server_id))
            server = self.show(server_id)
            return server['OS-EXT-STS:task_state'] is None and all(
                m['status'] in vocabulary.MigrationStatus.NOVA_FINAL
                for m in self.migrations(server_id))
        base.poll(ended_running_on_source, base.MIGRATION_TIMEOUT,
                  'every destination of %s failed' % server_id)
        self.assert_only_on(server_id, source)
        self.assertEqual(
            sorted(destinations),
            sorted(m['dest'] for m in self.new_migrations(server_id, before)
                   if m['status'] != 'completed'))

    # -- scenario 8 ------------------------------------------------------

    def test_abort_keeps_the_server_on_its_source(self):
        server_id, source = self.server()
        before = self.known(server_id)
        destinations = self.others(source)[:2]
        self.warm_up(server_id, source, destinations)
        self.abort(server_id, destinations[0])
        self.unthrottle(source)
        self.wait_done(server_id)
        self.assert_only_on(server_id, source)
        self.assertEqual(
            [], [m for m in self.new_migrations(server_id, before)
                 if m['status'] == 'completed'])

    def test_force_complete_switches_over_a_warm_up(self):
        server_id, source = self.server()
        before = self.known(server_id)
        destinations = self.others(source)
        self.warm_up(server_id, source, destinations)
        self.switch_over(server_id, source, destinations[-1])
        self.assert_won(server_id, destinations, before)

    # -- scenario 10 -----------------------------------------------------

    def test_rabbitmq_restarted_while_idle(self):
        """The broker forgets every (non-durable) queue when it restarts.

        Each service declares its queues again when it reconnects. A
        request made while no conductor has declared its queue yet (here:
        the conductor is down across the restart) is refused at once with
        503 and changes nothing: the broker returns the cast instead of
        dropping it. Once every service consumes its queues again, as
        ``rabbitmqctl list_queues`` shows, a migration succeeds.
        """
        server_id, source = self.server()
        before = self.known(server_id)
        consumed = self.cloud.consumed_queues()
        conductor = {name for name in consumed
                     if name.startswith(vocabulary.CONDUCTOR_BINARY)}
        self.assertIn(vocabulary.CONDUCTOR_BINARY, conductor)
        self.kill_service(vocabulary.CONDUCTOR_BINARY)
        self.cloud.procs['rabbitmq'].stop()
        self.restart(self.cloud.start_rabbitmq)
        self.wait_consumed(consumed - conductor)
        destinations = self.others(source)[:2]
        options = [option for host in destinations
                   for option in ('--destination', host)]

        refused = self.openstack('server', 'migrate', '--multi-destination',
                                 *options, server_id, check=False)
        self.assertEqual(1, refused.returncode, refused.stdout)
        self.assertIn('HTTP 503', refused.stderr)
        self.assertIn('No nova-multidest-conductor listens', refused.stderr)
        self.assertEqual(before, self.known(server_id))
        self.assert_only_on(server_id, source)

        self.restart(self.cloud.start_controller_service,
                     vocabulary.CONDUCTOR_BINARY)
        self.wait_consumed(consumed)
        result = self.openstack('server', 'migrate', '--multi-destination',
                                *options, '--wait', server_id)
        winner = self.assert_won(server_id, destinations, before)
        self.assertIn('now runs on %s.' % winner, result.stdout)

    def wait_consumed(self, queues):
        """Until each of ``queues`` has a consumer again."""
        base.poll(lambda: queues <= self.cloud.consumed_queues(),
                  cloud_mod.START_TIMEOUT,
                  'consumers on %s' % ', '.join(sorted(queues)))
