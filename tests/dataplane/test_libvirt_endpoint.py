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

"""The compute endpoint driving real libvirt domains, Nova's parts mocked.

Three endpoints (one source host, two destination hosts) share one
private libvirtd; destination domains get their own names there. Nova's
driver, Neutron, Cinder and the database are mocks: what is proven here
is the endpoint's use of the libvirt extension, the relay and the
agents, and the progress it records.
"""

import threading
from unittest import mock
import uuid

import fixtures

from nova import objects

from nova_multidest.compute import endpoint as compute_endpoint
from nova_multidest.dataplane import guest as guest_image
from nova_multidest.dataplane import protocol
from nova_multidest.virt.hypervisors import libvirt as libvirt_ext
from nova_multidest import vocabulary
from tests import base
from tests.dataplane import libvirt_fixture

STREAM_TIMEOUT = 60


def setUpModule():
    objects.register_all()


class EndpointOverLibvirtBase(base.TestCase):
    """A source endpoint and two destination endpoints on one libvirtd."""

    def guest(self):
        return guest_image.DirtyingGuest()

    def setUp(self):
        super().setUp()
        libvirt_fixture.libvirt.registerErrorHandler(
            lambda context, error: None, None)
        daemon = self.useFixture(libvirt_fixture.LibvirtDaemon())
        self.conn = daemon.connection
        self.daemon = daemon
        work_dir = self.useFixture(fixtures.TempDir()).path
        self.work_dir = work_dir
        self.flags(group=None, instances_path=work_dir)
        self.flags(listen_address='127.0.0.1', port_min=42100,
                   port_max=42199, max_bandwidth_mb=1024,
                   downtime_limit_ms=2000)
        for target in ('nova.network.neutron.API', 'nova.volume.cinder.API',
                       'nova.rpc.get_client'):
            patcher = mock.patch(target)
            patcher.start()
            self.addCleanup(patcher.stop)
        patcher = mock.patch.object(
            objects.BlockDeviceMappingList, 'get_by_instance_uuid',
            return_value=objects.BlockDeviceMappingList(objects=[]))
        patcher.start()
        self.addCleanup(patcher.stop)
        # No conductor gives a migration up here (no database either).
        self.useFixture(fixtures.MockPatch(
            'nova_multidest.compute.endpoint.ComputeEndpoint._still_wanted',
            return_value=True))

        kernel = self.guest().write(work_dir)
        self.domain_name = 'instance-%s' % uuid.uuid4().hex[:8]
        self.conn.createXML(
            libvirt_fixture.source_xml(self.domain_name, kernel), 0)
        self.instance = mock.Mock(uuid=str(uuid.uuid4()), host='src',
                                  flavor=mock.Mock(memory_mb=64))
        self.instance.name = self.domain_name
        self.source = self.endpoint('src', rename=False)
        self.dests = {host: self.endpoint(host, rename=True)
                      for host in ('dst1', 'dst2')}
        # spec_set: a name that is no field of Nova's Migration fails.
        self.migrations = {
            host: mock.Mock(spec_set=objects.Migration,
                            uuid=str(uuid.uuid4()), source_compute='src',
                            dest_compute=host)
            for host in self.dests}

    def endpoint(self, host, rename):
        driver = mock.Mock()
        driver.multidest_guest_running.return_value = False
        driver.pre_live_migration.side_effect = (
            lambda ctxt, inst, bdi, ni, disk, md: md)
        driver.multidest_destination_xml.side_effect = (
            lambda inst, xml, md: xml)
        extension = libvirt_ext.LibvirtHypervisor(
            lambda: self.conn, rename_destinations=rename,
            work_dir=self.work_dir)
        endpoint = compute_endpoint.ComputeEndpoint(
            driver, host, hypervisor=extension)
        endpoint.compute_rpcapi = mock.Mock()
        endpoint.compute_rpcapi.get_source_guest.side_effect = (
            lambda ctxt, inst, **kwargs: self.source.get_source_guest(
                ctxt, inst, **kwargs))
        self.addCleanup(endpoint.close)
        return endpoint

    def prepare_destinations(self, secret):
        migrate_data = objects.LibvirtLiveMigrateData(
            is_shared_instance_path=True, is_shared_block_storage=True,
            block_migration=False)
        destinations = []
        for host, endpoint in self.dests.items():
            result = endpoint.prepare_destination(
                'ctxt', self.instance, self.migrations[host], secret, False,
                migrate_data)
            destinations.append({
                'migration_uuid': self.migrations[host].uuid, 'host': host,
                'agent_address': result['agent_address']})
        return destinations

    def start_stream(self, destinations, secret, topology, warm_up):
        by_uuid = {m.uuid: m for m in self.migrations.values()}
        with mock.patch.object(objects.Migration, 'get_by_uuid',
                               side_effect=lambda c, u: by_uuid[u]):
            self.source.start_stream('ctxt', self.instance, destinations,
                                     secret, topology, warm_up)


class EndpointOverLibvirtTest(EndpointOverLibvirtBase):

    def test_two_destinations_one_winner(self):
        secret = protocol.new_secret().hex()
        destinations = self.prepare_destinations(secret)
        self.assertEqual(3, len(self.conn.listAllDomains(0)))

        saved = threading.Event()
        for migration in self.migrations.values():
            migration.save.side_effect = saved.set
        self.start_stream(destinations, secret, vocabulary.Topology.CHAIN,
                          False)
        for host, endpoint in self.dests.items():
            self.assertEqual('completed', endpoint.wait_destination(
                'ctxt', self.instance, self.migrations[host],
                STREAM_TIMEOUT))
        self.assertTrue(self.source._stream(self.instance).wait(
            STREAM_TIMEOUT))
        self.assertTrue(saved.wait(STREAM_TIMEOUT))
        status = self.source.source_status('ctxt', self.instance)
        self.assertEqual('completed', status['state'])
        for migration in self.migrations.values():
            self.assertGreater(migration.memory_total, 0)
            self.assertGreater(migration.memory_processed, 0)
            # Nova's API takes null, not 0, for "nothing left".
            self.assertIsNone(migration.memory_remaining)

        stored = mock.Mock(system_metadata={
            vocabulary.SYSMETA_ACTIVE: vocabulary.SYSMETA_ACTIVE_VALUE,
            vocabulary.SYSMETA_WINNER: self.migrations['dst1'].uuid})
        with mock.patch.object(objects.Instance, 'get_by_uuid',
                               return_value=stored):
            self.dests['dst1'].resume_destination(
                'ctxt', self.instance, self.migrations['dst1'])
        self.dests['dst2'].revert_destination(
            'ctxt', self.instance, self.migrations['dst2'])
        running = [d.name() for d in self.conn.listAllDomains(0)
                   if d.state()[0] == libvirt_fixture.libvirt.
                   VIR_DOMAIN_RUNNING]
        self.assertEqual(['%s-dst1' % self.domain_name], running)
        self.assertEqual(
            sorted([self.domain_name, '%s-dst1' % self.domain_name]),
            sorted(d.name() for d in self.conn.listAllDomains(0)))
        self.assertEqual([], self.dests['dst2'].journal.migration_uuids())
        self.assertEqual([], self.dests['dst1'].journal.migration_uuids())
