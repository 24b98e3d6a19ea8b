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

"""The driver operators select serves the endpoint and routes Nova's calls.
"""

from unittest import mock

import testtools

from nova.virt.libvirt import driver as libvirt_driver

from nova_multidest.compute import driver
from nova_multidest.virt import driver as virt_driver
from nova_multidest import vocabulary


class DriverTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        # Nova's __init__ needs a libvirt host; these tests need none of it.
        self.driver = driver.MultiDestLibvirtDriver.__new__(
            driver.MultiDestLibvirtDriver)
        self.driver.multidest = mock.Mock()
        self.driver._multidest_server = None
        self.instance = mock.Mock(uuid='inst-1')

    def test_force_complete_switches_over_a_multidest_stream(self):
        self.driver.multidest.has_stream.return_value = True
        with mock.patch.object(libvirt_driver.LibvirtDriver,
                               'live_migration_force_complete') as parent:
            self.driver.live_migration_force_complete(self.instance)
        self.driver.multidest.switch_over.assert_called_once_with(
            None, self.instance)
        parent.assert_not_called()

    def test_force_complete_falls_back_to_libvirt(self):
        self.driver.multidest.has_stream.return_value = False
        with mock.patch.object(libvirt_driver.LibvirtDriver,
                               'live_migration_force_complete') as parent:
            self.driver.live_migration_force_complete(self.instance)
        parent.assert_called_once_with(self.instance)
        self.driver.multidest.switch_over.assert_not_called()

    def test_abort_aborts_a_multidest_stream(self):
        self.driver.multidest.has_stream.return_value = True
        with mock.patch.object(libvirt_driver.LibvirtDriver,
                               'live_migration_abort') as parent:
            self.driver.live_migration_abort(self.instance)
        self.driver.multidest.abort_stream.assert_called_once_with(
            None, self.instance)
        parent.assert_not_called()

    def test_abort_falls_back_to_libvirt(self):
        self.driver.multidest.has_stream.return_value = False
        with mock.patch.object(libvirt_driver.LibvirtDriver,
                               'live_migration_abort') as parent:
            self.driver.live_migration_abort(self.instance)
        parent.assert_called_once_with(self.instance)

    def test_resources_carry_the_rpc_version_served(self):
        with mock.patch.object(libvirt_driver.LibvirtDriver,
                               'get_available_resource',
                               return_value={'stats': {'uptime': 5},
                                             'vcpus': 2}):
            resources = self.driver.get_available_resource('node1')
        self.assertEqual({'uptime': 5, vocabulary.COMPUTE_STATS_KEY: '1.3'},
                         resources['stats'])
        self.assertEqual(2, resources['vcpus'])

    @mock.patch('nova.rpc.get_server')
    @mock.patch('nova_multidest.compute.endpoint.ComputeEndpoint')
    @mock.patch.object(virt_driver.LibvirtDriver, 'init_host')
    def test_init_host_cleans_up_then_serves(self, parent, endpoint_cls,
                                             get_server):
        calls = mock.Mock()
        endpoint = endpoint_cls.return_value
        endpoint.cleanup_after_restart.side_effect = (
            lambda ctxt: calls.cleanup())
        get_server.return_value.start.side_effect = lambda: calls.start()
        self.driver.multidest_hypervisor = mock.sentinel.extension
        self.driver.init_host('host1')
        parent.assert_called_once_with('host1')
        endpoint_cls.assert_called_once_with(
            self.driver, 'host1', mock.sentinel.extension, version='1.3')
        self.assertEqual([mock.call.cleanup(), mock.call.start()],
                         calls.mock_calls)
        target = get_server.call_args.args[0]
        self.assertEqual(('nova-multidest-compute', 'host1'),
                         (target.topic, target.server))
        self.assertEqual([endpoint], get_server.call_args.args[1])

        with mock.patch.object(libvirt_driver.LibvirtDriver,
                               'cleanup_host') as parent_cleanup:
            self.driver.cleanup_host('host1')
        get_server.return_value.stop.assert_called_once_with()
        endpoint.close.assert_called_once_with()
        parent_cleanup.assert_called_once_with('host1')

    @mock.patch('nova.objects.Instance.get_by_uuid')
    @mock.patch.object(libvirt_driver.LibvirtDriver,
                       'process_instances_at_startup',
                       side_effect=lambda ctxt, instances: instances)
    def test_start_up_leaves_servers_a_group_owns_alone(self, parent,
                                                        get_by_uuid):
        """Nova's _init_instance would reset them and may fail the start."""
        running = {'multidest_active': 'true'}
        plain = mock.Mock(uuid='plain', task_state=None, system_metadata={},
                          host='host1')
        nova_own = mock.Mock(uuid='nova', task_state='migrating',
                             system_metadata={}, host='host1')
        grouped = mock.Mock(uuid='grouped', task_state='migrating',
                            system_metadata=running, host='host1')
        # Listed while its group ran; the group ended and moved it since.
        moved = mock.Mock(uuid='moved', task_state='migrating',
                          system_metadata={}, host='host1')
        stored = {'nova': mock.Mock(system_metadata={}, host='host1'),
                  'grouped': mock.Mock(system_metadata=running,
                                       host='host1'),
                  'moved': mock.Mock(system_metadata={}, host='host2')}
        get_by_uuid.side_effect = lambda ctxt, uuid, **kw: stored[uuid]
        kept = self.driver.process_instances_at_startup(
            'ctxt', [plain, nova_own, grouped, moved])
        self.assertEqual(['plain', 'nova'], [i.uuid for i in kept])
