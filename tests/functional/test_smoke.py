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

"""Our driver must not break anything Nova does on its own."""

from nova_multidest.compute import driver as multidest_driver
from tests.functional import base


class SmokeTest(base.MultiDestTestBase):
    """Nova's own live migration between computes running our driver."""

    COMPUTES = 3

    def test_three_computes_run_our_driver(self):
        self.assertEqual(3, len(self.computes))
        for hostname in self.hostnames:
            self.assertIs(multidest_driver.MultiDestLibvirtDriver,
                          type(self.compute_driver(hostname)))
        services = self.admin_api.get_services(binary='nova-compute')
        self.assertEqual(sorted(self.hostnames),
                         sorted(s['host'] for s in services))
        self.assertTrue(all(s['state'] == 'up' for s in services))

    def test_ordinary_live_migration_completes(self):
        source, target = self.hostnames[0], self.hostnames[2]
        server = self.boot_server(
            host=source, networks=[{'port': self.neutron.port_1['id']}])
        self.assert_invariants(server, source)

        self._live_migrate(server, host=target)

        self.assert_invariants(server, target)
        migration, = self.get_migrations(server['id'])
        self.assertEqual('completed', migration.status)
        self.assertEqual((source, target),
                         (migration.source_compute, migration.dest_compute))
