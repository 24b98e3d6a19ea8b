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

"""A block migration through the compute endpoints, real libvirt and QEMU.

As ``test_libvirt_endpoint``, with Nova's driver mocked: its
pre-live-migration makes each destination's top image over the shared
base image, as Nova's image cache does, and its rollback removes it.
"""

import functools
import os
import threading
from unittest import mock

import fixtures

from nova import objects

from nova_multidest.dataplane import guest as guest_image
from nova_multidest.dataplane import protocol
from nova_multidest.dataplane import qemu
from nova_multidest import vocabulary
from tests.dataplane import libvirt_fixture
from tests.dataplane import test_libvirt_disks as disks_test
from tests.dataplane import test_libvirt_endpoint as endpoint_test

MiB = 1 << 20
TIMEOUT = 120


def setUpModule():
    objects.register_all()


class BlockMigrationOverLibvirtTest(endpoint_test.EndpointOverLibvirtBase):

    def guest(self):
        return guest_image.DirtyingGuest(pages_per_tick=16)

    def setUp(self):
        self._fixture_xml = libvirt_fixture.source_xml
        self.useFixture(fixtures.MockPatch(
            'tests.dataplane.libvirt_fixture.source_xml',
            side_effect=self._disk_xml))
        super().setUp()
        for host, endpoint in self.dests.items():
            driver = endpoint.driver
            driver.pre_live_migration.side_effect = functools.partial(
                self._pre_live_migration, host)
            driver.multidest_destination_xml.side_effect = (
                functools.partial(self._destination_xml, host))
        self.source.driver.multidest_copied_devices.return_value = ['vda']
        self.source.driver.get_instance_disk_info.return_value = '[]'

    def image(self, host):
        return os.path.join(self.work_dir, '%s.qcow2' % host)

    def _disk_xml(self, name, kernel):
        self.base = os.path.join(self.work_dir, 'base.qcow2')
        qemu.create_image(self.base, disks_test.DISK_MB * MiB)
        disks_test.qemu_io_offline(self.base, 'write -P 0x11 0 8M')
        qemu.create_image(self.image('src'), disks_test.DISK_MB * MiB,
                          backing=self.base)
        disks_test.qemu_io_offline(self.image('src'), 'write -P 0x22 4M 16M')
        return self._fixture_xml(name, kernel, disk=self.image('src'))

    def _pre_live_migration(self, host, ctxt, inst, bdi, ni, disk_info, md):
        self.assertEqual('[]', disk_info)
        qemu.create_image(self.image(host), disks_test.DISK_MB * MiB,
                          backing=self.base)
        return md

    def _destination_xml(self, host, inst, xml, md):
        return xml.replace(self.image('src'), self.image(host))

    def test_block_migration_to_two_destinations(self):
        secret = protocol.new_secret().hex()
        migrate_data = objects.LibvirtLiveMigrateData(
            is_shared_instance_path=False, is_shared_block_storage=False,
            block_migration=True)
        destinations = []
        for host, endpoint in self.dests.items():
            result = endpoint.prepare_destination(
                'ctxt', self.instance, self.migrations[host], secret, True,
                migrate_data)
            destinations.append({
                'migration_uuid': self.migrations[host].uuid, 'host': host,
                'agent_address': result['agent_address'],
                'disk_agent_address': result['disk_agent_address']})
        saved = threading.Event()
        for migration in self.migrations.values():
            migration.save.side_effect = saved.set
        by_uuid = {m.uuid: m for m in self.migrations.values()}
        with mock.patch.object(objects.Migration, 'get_by_uuid',
                               side_effect=lambda c, u: by_uuid[u]):
            self.source.start_stream('ctxt', self.instance, destinations,
                                     secret, vocabulary.Topology.STAR, False,
                                     block_migration=True)
        for host, endpoint in self.dests.items():
            self.assertEqual('completed', endpoint.wait_destination(
                'ctxt', self.instance, self.migrations[host], TIMEOUT))
        self.assertTrue(self.source._stream(self.instance).wait(TIMEOUT))
        self.assertTrue(saved.wait(TIMEOUT))
        status = self.source.source_status('ctxt', self.instance)
        self.assertEqual('completed', status['state'], status)
        for migration in self.migrations.values():
            self.assertGreaterEqual(migration.disk_total, 16 * MiB)
            self.assertEqual(migration.disk_total, migration.disk_processed)
            # Nova's API takes null, not 0, for "nothing left".
            self.assertIsNone(migration.disk_remaining)

        stored = mock.Mock(system_metadata={
            vocabulary.SYSMETA_ACTIVE: vocabulary.SYSMETA_ACTIVE_VALUE,
            vocabulary.SYSMETA_WINNER: self.migrations['dst1'].uuid})
        with mock.patch.object(objects.Instance, 'get_by_uuid',
                               return_value=stored):
            self.dests['dst1'].resume_destination(
                'ctxt', self.instance, self.migrations['dst1'])
        self.assertTrue(disks_test.same_content(self.image('src'),
                                                self.image('dst1')))
        self.dests['dst2'].revert_destination(
            'ctxt', self.instance, self.migrations['dst2'])
        rollback = self.dests['dst2'].driver.\
            rollback_live_migration_at_destination
        self.assertTrue(rollback.call_args.kwargs['destroy_disks'])
        self.assertEqual(
            sorted([self.domain_name, '%s-dst1' % self.domain_name]),
            sorted(d.name() for d in self.conn.listAllDomains(0)))
