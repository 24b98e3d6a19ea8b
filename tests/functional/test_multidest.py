"""Multi-destination live migration through Nova, from API to computes.

Four or five computes run MultiDestLibvirtDriver over Nova's fake libvirt
with the fake hypervisor extension; every test ends with the invariants
checker: ACTIVE on exactly the expected host, nothing left anywhere else.
"""

from tests.functional import base


class HappyPathTest(base.MultiDestMigrationTestBase):

    COMPUTES = 4

    def setUp(self):
        super().setUp()
        self.source = self.hostnames[0]
        self.server = self.boot_server(
            host=self.source, networks=[{'port': self.neutron.port_1['id']}])

    def assert_group(self, result, hosts):
        migrations = self.migrations_by_host(self.server['id'])
        self.assertEqual(sorted(hosts), sorted(migrations))
        winner = result['host']
        self.assertIn(winner, hosts)
        self.assertEqual('completed', result['result'])
        for host, migration in migrations.items():
            self.assertEqual(self.source, migration.source_compute)
            self.assertEqual('completed' if host == winner else 'cancelled',
                             migration.status, host)
        self.assert_invariants(self.server, winner)
        return winner

    def test_two_explicit_destinations(self):
        hosts = self.hostnames[1:3]
        result = self.migrate_and_wait(self.server, destinations=hosts)
        self.assert_group(result, hosts)

    def test_three_explicit_destinations(self):
        hosts = self.hostnames[1:4]
        result = self.migrate_and_wait(self.server, destinations=hosts)
        self.assert_group(result, hosts)

    def test_two_scheduled_destinations(self):
        result = self.migrate_and_wait(self.server, count=2)
        hosts = list(self.migrations_by_host(self.server['id']))
        self.assertEqual(2, len(hosts))
        self.assertNotIn(self.source, hosts)
        self.assert_group(result, hosts)

    def test_three_scheduled_destinations(self):
        result = self.migrate_and_wait(self.server, count=3)
        self.assert_group(result, self.hostnames[1:4])
