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

"""Nova's [libvirt] live-migration settings as the source stream's."""

from unittest import mock

from oslo_config import fixture as config_fixture
import testtools

from nova.virt.libvirt import migration as libvirt_migration

from nova_multidest import conf
from nova_multidest.dataplane import source_stream
from nova_multidest import migration_limits
from nova_multidest.virt import migration_settings

MiB = 1 << 20


def instance(memory_mb=4096):
    return mock.Mock(uuid='inst-1', flavor=mock.Mock(memory_mb=memory_mb))


class NovaSettingsTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.config = self.useFixture(config_fixture.Config(conf.CONF))

    def libvirt(self, **kwargs):
        self.config.config(group='libvirt', **kwargs)

    def multidest(self, **kwargs):
        self.config.config(group='multidest', **kwargs)

    def settings(self, memory_mb=4096, warm_up=False):
        settings = migration_settings.stream_settings(
            instance(memory_mb), warm_up)
        settings.validate()
        return settings

    def test_nova_defaults(self):
        s = self.settings()
        self.assertEqual({}, s.capabilities)
        self.assertEqual(source_stream.UNLIMITED_BANDWIDTH, s.bandwidth)
        self.assertEqual(500, s.downtime_limit_ms)
        self.assertEqual(800 * 4, s.completion_timeout)
        self.assertEqual('abort', s.timeout_action)
        self.assertEqual(0, s.multifd_channels)

    def test_bandwidth(self):
        self.libvirt(live_migration_bandwidth=100)
        self.assertEqual(100 * MiB, self.settings().max_bandwidth)
        self.multidest(max_bandwidth_mb=0)
        self.assertEqual(source_stream.UNLIMITED_BANDWIDTH,
                         self.settings().bandwidth)

    def test_stepped_downtime_equals_novas_schedule(self):
        self.libvirt(live_migration_downtime=400,
                     live_migration_downtime_steps=10,
                     live_migration_downtime_delay=30)
        s = self.settings(memory_mb=3072)
        self.assertEqual(400, s.downtime_limit_ms)
        steps = list(libvirt_migration.downtime_steps(3))
        self.assertEqual(steps, list(s.downtime_steps))
        guest = mock.Mock()
        nova_downtime = None
        for elapsed in range(0, 1000, 5):
            nova_downtime = libvirt_migration.update_downtime(
                guest, instance(), nova_downtime, steps, elapsed + 0.5)
            with self.subTest(elapsed=elapsed):
                self.assertEqual(nova_downtime,
                                 s.downtime_at(elapsed + 0.5))
        self.assertEqual(400, nova_downtime)

    def test_small_guests_count_as_two_gib_as_in_nova(self):
        self.libvirt(live_migration_downtime_delay=10,
                     live_migration_completion_timeout=100)
        s = self.settings(memory_mb=512)
        self.assertEqual(list(libvirt_migration.downtime_steps(2)),
                         list(s.downtime_steps))
        self.assertEqual(200, s.completion_timeout)

    def test_a_fixed_downtime_limit_wins(self):
        self.multidest(downtime_limit_ms=2000)
        s = self.settings()
        self.assertEqual(2000, s.downtime_limit_ms)
        self.assertEqual((), s.downtime_steps)

    def test_completion_timeout_and_action(self):
        self.libvirt(live_migration_completion_timeout=0,
                     live_migration_timeout_action='force_complete')
        s = self.settings()
        self.assertEqual(0, s.completion_timeout)
        self.assertEqual('force_complete', s.timeout_action)
        self.multidest(completion_timeout=90)
        self.assertEqual(90, self.settings().completion_timeout)

    def test_auto_converge(self):
        self.libvirt(live_migration_permit_auto_converge=True)
        self.assertEqual({'auto-converge': True}, self.settings().capabilities)

    def test_post_copy_falls_back_as_in_nova_without_post_copy(self):
        self.libvirt(live_migration_permit_post_copy=True,
                     live_migration_permit_auto_converge=True)
        with mock.patch.object(migration_settings, 'LOG') as log:
            s = self.settings()
        self.assertEqual({'auto-converge': True}, s.capabilities)
        self.assertIn('cannot use post-copy', log.warning.call_args[0][0])

    def test_parallel_connections_are_multifd_channels(self):
        self.libvirt(live_migration_parallel_connections=4)
        s = self.settings()
        self.assertEqual(4, s.multifd_channels)
        self.assertEqual({'multifd': True}, s.shared_capabilities())

    def test_warm_up_keeps_the_multidest_warm_up_options(self):
        self.multidest(warm_up_exit='downtime', warm_up_percent=50,
                       switch_over_timeout=7)
        s = self.settings(warm_up=True)
        self.assertTrue(s.warm_up)
        self.assertEqual(('downtime', 50, 7),
                         (s.warm_up_exit, s.warm_up_percent,
                          s.switch_over_timeout))
        self.assertEqual(500, s.downtime_at(10 ** 6))

    def test_tls(self):
        self.assertIsNone(migration_settings.tls_files())
        self.libvirt(live_migration_with_native_tls=True)
        cert, key, ca = migration_settings.tls_files()
        self.assertEqual(
            ['server-cert.pem', 'server-key.pem', 'ca-cert.pem'],
            [path.rsplit('/', 1)[1] for path in (cert, key, ca)])
        self.multidest(tls_cert_file='c.pem', tls_key_file='k.pem',
                       tls_ca_file='a.pem')
        self.assertEqual(('c.pem', 'k.pem', 'a.pem'),
                         migration_settings.tls_files())
        self.multidest(tls=False)
        self.assertIsNone(migration_settings.tls_files())


class ConductorWaitTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.config = self.useFixture(config_fixture.Config(conf.CONF))

    def test_the_conductor_waits_past_the_sources_timeout(self):
        self.config.config(group='multidest', switch_over_timeout=10,
                           election_timeout=60)
        self.assertEqual(800 * 4 + 70, migration_limits.conductor_wait(4096))
        self.config.config(group='libvirt',
                           live_migration_completion_timeout=0)
        self.assertEqual(migration_limits.UNBOUNDED_WAIT + 70,
                         migration_limits.conductor_wait(4096))
