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

"""Scenario 1: the lab's cloud boots a server through Nova's normal path."""

from tools.lab import resources

from tests.lab import base


class BootTest(base.LabTestCase):

    def test_boot_runs_the_guest_on_its_host(self):
        server = self.boot('lab-boot')
        host = server['OS-EXT-SRV-ATTR:host']
        self.assertIn(host, [node.name for node in self.lab.hosts])
        self.assertEqual([host], self.running_copies(server['id']))
        self.assertEqual(
            {'VCPU': 1, 'MEMORY_MB': resources.FLAVOR_RAM_MB, 'DISK_GB': 1},
            self.allocations(server['id'])[host])
        self.assert_guest_runs(host, server['id'])

    def test_compute_services_run_our_driver_on_every_host(self):
        services = self.openstack_json('compute', 'service', 'list')
        up = {(s['Binary'], s['Host']) for s in services
              if s['State'] == 'up' and s['Status'] == 'enabled'}
        for node in self.lab.hosts:
            self.assertIn(('nova-compute', node.name), up)
        self.assertIn(('nova-multidest-conductor', 'controller'), up)
        hypervisors = self.openstack_json('hypervisor', 'list', '--long')
        self.assertEqual(
            {node.name: node.address for node in self.lab.hosts},
            {h['Hypervisor Hostname']: h['Host IP'] for h in hypervisors})
