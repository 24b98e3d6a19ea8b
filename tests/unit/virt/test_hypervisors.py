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
