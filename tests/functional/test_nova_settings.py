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

"""Nova's [libvirt] live-migration settings reach the data plane.

Nova's own API, conductor, scheduler and computes, our conductor and
compute endpoints; the fake hypervisor extension records what each
host's hypervisor was told (``fake.applied``).
"""

import os
import subprocess

import fixtures

from nova_multidest.dataplane import source_stream
from tests.functional import base

MiB = 1 << 20


class NovaSettingsTest(base.MultiDestMigrationTestBase):

    COMPUTES = 3

    def setUp(self):
        super().setUp()
        self.source = self.hostnames[0]
        self.dests = self.hostnames[1:3]
        self.server = self.boot_server(host=self.source)

    def migrate(self, **libvirt):
        self.flags(group='libvirt', **libvirt)
        return self.migrate_and_wait(self.server, destinations=self.dests)

    def applied(self, host, what):
        return [value for kind, value in self.fake_hypervisor.applied(host)
                if kind == what]

    def assert_completed(self, result):
        self.assertEqual('completed', result['result'])
        self.assertIn(result['host'], self.dests)
        self.assert_invariants(self.server, result['host'])

    def test_bandwidth(self):
        self.assert_completed(self.migrate(live_migration_bandwidth=100))
        self.assertEqual(100 * MiB, self.applied(
            self.source, 'parameters')[0]['max_bandwidth'])

    def test_stepped_downtime_starts_at_novas_first_step(self):
        self.assert_completed(self.migrate(live_migration_downtime=400,
                                           live_migration_downtime_steps=4))
        limits = [parameters['downtime_limit_ms'] for parameters in
                  self.applied(self.source, 'parameters')
                  if 'downtime_limit_ms' in parameters]
        # Nova's first step once the first pass over memory is done.
        self.assertEqual([source_stream.HOLD_DOWNTIME_MS, 100], limits[:2])

    def test_auto_converge(self):
        self.assert_completed(self.migrate(
            live_migration_permit_auto_converge=True))
        self.assertTrue(self.applied(self.source,
                                     'capabilities')[0]['auto-converge'])
        for host in self.dests:
            capabilities, _channels = self.applied(host, 'incoming')[0]
            self.assertNotIn('auto-converge', capabilities)

    def test_parallel_connections(self):
        self.assert_completed(self.migrate(
            live_migration_parallel_connections=3))
        self.assertTrue(self.applied(self.source,
                                     'capabilities')[0]['multifd'])
        self.assertEqual(3, self.applied(
            self.source, 'parameters')[0]['multifd_channels'])
        for host in self.dests:
            self.assertEqual([({'multifd': True}, 3)],
                             self.applied(host, 'incoming'))

    def test_native_tls(self):
        directory = self.useFixture(fixtures.TempDir()).path
        cert = os.path.join(directory, 'cert.pem')
        key = os.path.join(directory, 'key.pem')
        subprocess.run(
            ['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
             '-keyout', key, '-out', cert, '-days', '1',
             '-subj', '/CN=localhost'], check=True, capture_output=True)
        self.flags(group='multidest', tls_cert_file=cert, tls_key_file=key,
                   tls_ca_file=cert)
        self.assert_completed(self.migrate(
            live_migration_with_native_tls=True))
        self.assertEqual([True], self.applied(self.source, 'relay_tls'))
        for host in self.dests:
            self.assertEqual([True], self.applied(host, 'tls'))

    def test_no_tls_by_default(self):
        self.assert_completed(self.migrate())
        self.assertEqual([False], self.applied(self.source, 'relay_tls'))

    def test_completion_timeout_abort_keeps_the_server_on_its_source(self):
        # At least 2 GiB count, as in Nova: a 2 s timeout.
        self.fake_hypervisor.configure(steps=400, step_seconds=0.05)
        result = self.migrate(live_migration_completion_timeout=1)
        self.assertEqual('failed', result['result'])
        self.assertEqual(self.source, result['host'])
        self.assertEqual([True], self.applied(self.source, 'cancel'))
        migrations = self.get_migrations(self.server['id'])
        self.assertEqual({'failed'}, {m.status for m in migrations})
        self.assert_invariants(self.server, self.source)

    def test_completion_timeout_force_complete(self):
        self.fake_hypervisor.configure(steps=100, step_seconds=0.05)
        result = self.migrate(live_migration_completion_timeout=1,
                              live_migration_timeout_action='force_complete')
        self.assert_completed(result)
        self.assertEqual([], self.applied(self.source, 'cancel'))
        self.assertEqual(source_stream.MAX_DOWNTIME_MS, self.applied(
            self.source, 'parameters')[-1]['downtime_limit_ms'])
