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

"""Loading the hypervisor extension named by [multidest] hypervisor."""

import testtools

from nova_multidest import exceptions
from nova_multidest.virt import hypervisors
from nova_multidest.virt.hypervisors import fake


class LoadTest(testtools.TestCase):

    def test_extension_gets_the_connection_factory(self):
        connection = object()
        extension = hypervisors.load('fake', lambda: connection)
        self.assertIsInstance(extension, fake.FakeHypervisor)
        self.assertIs(connection, extension.connection)

    def test_data_plane_only_extension_is_refused(self):
        error = self.assertRaises(exceptions.InvalidSettings,
                                  hypervisors.load, 'qemu', lambda: None)
        self.assertIn('hypervisor = qemu', str(error))
