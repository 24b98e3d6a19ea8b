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

"""What virt/driver.py adds to Nova's libvirt driver."""

from unittest import mock

from lxml import etree
import testtools

from nova import objects
from nova.virt.libvirt import driver as libvirt_driver

from nova_multidest.virt import driver
from nova_multidest.virt.hypervisors import libvirt as libvirt_ext

SOURCE_XML = ("<domain type='kvm'><name>instance-1</name>"
              "<devices><graphics type='vnc' listen='10.0.0.1'/></devices>"
              "</domain>")


def setUpModule():
    objects.register_all()


class DriverTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        # Nova's __init__ needs a libvirt host; these tests need none of it.
        self.driver = driver.LibvirtDriver.__new__(driver.LibvirtDriver)
        self.driver._host = mock.Mock()

    @mock.patch.object(libvirt_driver.LibvirtDriver, 'init_host')
    def test_init_host_builds_the_extension_on_the_hosts_connection(
            self, parent):
        self.driver.init_host('host1')
        parent.assert_called_once_with('host1')
        extension = self.driver.multidest_hypervisor
        self.assertIsInstance(extension, libvirt_ext.LibvirtHypervisor)
        # Nova's Host replaces its connection when libvirtd restarts.
        self.driver._host.get_connection.return_value = mock.sentinel.new
        self.assertIs(mock.sentinel.new, extension.connection)

    def test_destination_xml_applies_this_hosts_migrate_data(self):
        migrate_data = objects.LibvirtLiveMigrateData(
            graphics_listen_addr_vnc='10.0.0.2', bdms=[],
            serial_listen_addr=None, serial_listen_ports=[],
            target_connect_addr=None,
            supported_perf_events=[])
        xml = self.driver.multidest_destination_xml(
            mock.Mock(), SOURCE_XML, migrate_data)
        doc = etree.fromstring(xml)
        self.assertEqual('instance-1', doc.findtext('name'))
        self.assertEqual('10.0.0.2',
                         doc.find('devices/graphics').get('listen'))
