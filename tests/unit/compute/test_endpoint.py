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

"""The compute endpoint, with Nova's services mocked and the fake extension."""

import threading
from unittest import mock

import fixtures

from nova import objects

from nova_multidest.compute import endpoint as compute_endpoint
from nova_multidest.dataplane import disk_copy
from nova_multidest.dataplane import hypervisor
from nova_multidest.dataplane import source_stream
from nova_multidest import exceptions
from nova_multidest.virt.hypervisors import fake
from nova_multidest import vocabulary
from tests import base

SECRET_HEX = 'ab' * 32
SOURCE_ATTACHMENT = '2c0c5a3e-7f8e-4b55-9a43-6c1f0d3c6a01'
DEST_ATTACHMENT = '9d2b1c44-1e0f-4c7a-8a3b-5e6f7a8b9c02'
MIGRATION_UUID = '5a7e0c1d-3b2f-4e6a-9c8d-1f2e3d4c5b6a'
SOURCE_XML = ("<domain><name>instance-1</name>"
              "<memory unit='KiB'>4096</memory></domain>")


def setUpModule():
    objects.register_all()


def volume_bdm(connection_info):
    return objects.BlockDeviceMapping(
        source_type='volume', destination_type='volume', volume_id='vol-1',
        attachment_id=SOURCE_ATTACHMENT, device_name='/dev/vdb',
        no_device=False,
        boot_index=None, guest_format=None, disk_bus='virtio',
        device_type='disk', delete_on_termination=False, volume_size=1,
        snapshot_id=None, image_id=None, tag=None, volume_type=None,
        encrypted=False, encryption_secret_uuid=None, encryption_format=None,
        encryption_options=None, connection_info=connection_info)


class EndpointTestBase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.addCleanup(fake.reset)
        fake.configure(steps=4, step_seconds=0.001)
        self.flags(group=None,
                   instances_path=self.useFixture(fixtures.TempDir()).path)
        self.flags(listen_address='127.0.0.1', port_min=41000,
                   port_max=41009)
        for target in ('nova.network.neutron.API', 'nova.volume.cinder.API',
                       'nova.rpc.get_client'):
            patcher = mock.patch(target)
            patcher.start()
            self.addCleanup(patcher.stop)
        self.driver = mock.Mock()
        self.driver.multidest_guest_running.return_value = False
        self.driver.multidest_destination_xml.return_value = SOURCE_XML
        self.driver.pre_live_migration.side_effect = (
            lambda ctxt, inst, bdi, ni, disk, md: md)
        self.bdms = objects.BlockDeviceMappingList(objects=[])
        patcher = mock.patch.object(
            objects.BlockDeviceMappingList, 'get_by_instance_uuid',
            return_value=self.bdms)
        patcher.start()
        self.addCleanup(patcher.stop)
        self.instance = mock.Mock(uuid='inst-1', host='src',
                                  flavor=mock.Mock(memory_mb=512))
        self.instance.name = 'instance-1'
        self.migration = mock.Mock(uuid='mig-1', source_compute='src',
                                   dest_compute='dst', status='preparing')
        # As stored: the group runs and holds its destinations.
        self.stored = mock.Mock(system_metadata={
            vocabulary.SYSMETA_ACTIVE: vocabulary.SYSMETA_ACTIVE_VALUE})
        for name, value in ((objects.Migration, self.migration),
                            (objects.Instance, self.stored)):
            patcher = mock.patch.object(name, 'get_by_uuid',
                                        return_value=value)
            patcher.start()
            self.addCleanup(patcher.stop)

    def endpoint(self, host='dst'):
        endpoint = compute_endpoint.ComputeEndpoint(
            self.driver, host, hypervisor=fake.FakeHypervisor())
        endpoint.compute_rpcapi = mock.Mock()
        endpoint.compute_rpcapi.get_source_guest.return_value = {
            'xml': SOURCE_XML}
        self.addCleanup(endpoint.close)
        return endpoint

    def migrate_data(self, shared=True):
        return objects.LibvirtLiveMigrateData(
            is_shared_instance_path=shared, is_shared_block_storage=False,
            block_migration=False)


class DestinationSideTest(EndpointTestBase):

    def test_prepare_refuses_a_host_that_is_not_the_destination(self):
        endpoint = self.endpoint(host='src')
        self.assertRaises(exceptions.InvalidSettings,
                          endpoint.prepare_destination, 'ctxt',
                          self.instance, self.migration, SECRET_HEX, False,
                          self.migrate_data())

    def prepare_block_migration(self, endpoint):
        md = self.migrate_data(shared=False)
        md.block_migration = True
        endpoint.compute_rpcapi.get_source_guest.return_value = {
            'xml': SOURCE_XML, 'disk_info': '[{"path": "disk"}]',
            'disks': [{'name': 'vda', 'size': 1 << 30, 'shallow': True}]}
        exports = {'vda': ('nbd.sock', 'vda')}
        with mock.patch.object(fake.FakeDestination, 'export_disks',
                               return_value=exports) as export, \
                mock.patch.object(fake.FakeDestination, 'open_disk_stream',
                                  return_value=('127.0.0.1', 41005)) as disk:
            result = endpoint.prepare_destination(
                'ctxt', self.instance, self.migration, SECRET_HEX, True, md)
        return result, export, disk

    def test_block_migration_exports_disks_made_by_nova(self):
        endpoint = self.endpoint()
        result, export, disk = self.prepare_block_migration(endpoint)
        endpoint.compute_rpcapi.get_source_guest.assert_called_once_with(
            'ctxt', self.instance, block_migration=True)
        # Nova's own pre-live-migration makes the directory and disks.
        self.assertEqual('[{"path": "disk"}]',
                         self.driver.pre_live_migration.call_args.args[4])
        export.assert_called_once_with(
            [hypervisor.LocalDisk('vda', 1 << 30, True)])
        self.assertEqual({'vda': ('nbd.sock', 'vda')},
                         disk.call_args.kwargs['exports'])
        self.assertEqual(['127.0.0.1', 41005], result['disk_agent_address'])
        self.assertIn('agent_address', result)

    def test_block_migration_revert_removes_the_disks(self):
        endpoint = self.endpoint()
        self.prepare_block_migration(endpoint)
        endpoint.revert_destination('ctxt', self.instance, self.migration)
        kwargs = self.driver.rollback_live_migration_at_destination.\
            call_args.kwargs
        self.assertTrue(kwargs['destroy_disks'])
        self.assertFalse(kwargs['migrate_data'].is_shared_instance_path)

    def test_memory_only_prepare_asks_no_disks(self):
        endpoint = self.endpoint()
        result = endpoint.prepare_destination(
            'ctxt', self.instance, self.migration, SECRET_HEX, False,
            self.migrate_data())
        endpoint.compute_rpcapi.get_source_guest.assert_called_once_with(
            'ctxt', self.instance, block_migration=False)
        self.assertIsNone(self.driver.pre_live_migration.call_args.args[4])
        self.assertNotIn('disk_agent_address', result)

    def test_wait_destination_needs_the_disks_too(self):
        endpoint = self.endpoint()
        endpoint.prepare_destination('ctxt', self.instance, self.migration,
                                     SECRET_HEX, False, self.migrate_data())
        guest = endpoint._destinations['mig-1'].guest
        with mock.patch.object(type(guest), 'migration_status',
                               return_value='completed'), \
                mock.patch.object(type(guest), 'copies_disks', True), \
                mock.patch.object(type(guest), 'disks_copied') as copied:
            copied.return_value = None
            self.assertEqual('timeout', endpoint.wait_destination(
                'ctxt', self.instance, self.migration, 0.01))
            copied.return_value = False
            self.assertEqual('failed', endpoint.wait_destination(
                'ctxt', self.instance, self.migration, 1))
            copied.return_value = True
            self.assertEqual('completed', endpoint.wait_destination(
                'ctxt', self.instance, self.migration, 1))

    def test_prepare_returns_an_agent_in_the_port_range(self):
        endpoint = self.endpoint()
        result = endpoint.prepare_destination(
            'ctxt', self.instance, self.migration, SECRET_HEX, False,
            self.migrate_data())
        host, port = result['agent_address']
        self.assertEqual('127.0.0.1', host)
        self.assertTrue(41000 <= port <= 41009)
        self.assertEqual({}, result['attachment_ids'])
        self.driver.multidest_destination_xml.assert_called_once_with(
            self.instance, SOURCE_XML, result['migrate_data'])
        self.assertEqual(['mig-1'], endpoint.journal.migration_uuids())

    def test_agent_on_all_addresses_is_advertised_on_my_ip(self):
        self.flags(listen_address='0.0.0.0')
        self.flags(group=None, my_ip='192.0.2.7')
        result = self.endpoint().prepare_destination(
            'ctxt', self.instance, self.migration, SECRET_HEX, False,
            self.migrate_data())
        self.assertEqual('192.0.2.7', result['agent_address'][0])

    def test_prepare_attaches_volumes_without_touching_bdms(self):
        self.bdms.objects.append(volume_bdm('{"src": 1}'))
        endpoint = self.endpoint()
        endpoint.volume_api.attachment_create.return_value = {
            'id': DEST_ATTACHMENT, 'connection_info': {'dst': 1}}
        with mock.patch.object(objects.BlockDeviceMapping, 'save') as save:
            result = endpoint.prepare_destination(
                'ctxt', self.instance, self.migration, SECRET_HEX, False,
                self.migrate_data())
        save.assert_not_called()
        self.assertEqual({'vol-1': DEST_ATTACHMENT},
                         result['attachment_ids'])
        endpoint.volume_api.attachment_create.assert_called_once_with(
            'ctxt', 'vol-1', 'inst-1',
            connector=self.driver.get_volume_connector.return_value,
            mountpoint='/dev/vdb')
        bdi = self.driver.pre_live_migration.call_args.args[2]
        [driver_bdm] = bdi['block_device_mapping']
        self.assertEqual({'dst': 1}, driver_bdm['connection_info'])

    def test_failed_prepare_leaves_nothing(self):
        fake.inject_fault('dst', vocabulary.DestinationPhase.PREPARE)
        self.bdms.objects.append(volume_bdm('{}'))
        endpoint = self.endpoint()
        endpoint.volume_api.attachment_create.return_value = {
            'id': DEST_ATTACHMENT, 'connection_info': {}}
        self.assertRaises(exceptions.HypervisorError,
                          endpoint.prepare_destination, 'ctxt',
                          self.instance, self.migration, SECRET_HEX, False,
                          self.migrate_data())
        endpoint.volume_api.attachment_delete.assert_called_once_with(
            'ctxt', DEST_ATTACHMENT)
        self.driver.rollback_live_migration_at_destination.assert_called_once()
        self.assertEqual([], endpoint.journal.migration_uuids())
        self.assertEqual({}, fake._REGISTRY.agents)

    def test_wait_destination_without_a_stream_reports_failure(self):
        self.assertEqual('failed', self.endpoint().wait_destination(
            'ctxt', self.instance, self.migration, 1))

    def test_wait_destination_times_out_while_nothing_arrives(self):
        endpoint = self.endpoint()
        endpoint.prepare_destination('ctxt', self.instance, self.migration,
                                     SECRET_HEX, False, self.migrate_data())
        self.assertEqual('timeout', endpoint.wait_destination(
            'ctxt', self.instance, self.migration, 0.01))

    def test_revert_keeps_a_shared_instance_directory(self):
        endpoint = self.endpoint()
        endpoint.prepare_destination('ctxt', self.instance, self.migration,
                                     SECRET_HEX, False, self.migrate_data())
        endpoint.revert_destination('ctxt', self.instance, self.migration)
        kwargs = self.driver.rollback_live_migration_at_destination.\
            call_args.kwargs
        self.assertFalse(kwargs['destroy_disks'])
        self.assertEqual([], endpoint.journal.migration_uuids())
        self.assertEqual({}, fake._REGISTRY.agents)

    def test_revert_after_restart_works_from_the_journal(self):
        self.endpoint().prepare_destination(
            'ctxt', self.instance, self.migration, SECRET_HEX, False,
            self.migrate_data(shared=False))
        restarted = self.endpoint()
        restarted.hypervisor.destroy_incoming = mock.Mock()
        restarted.revert_destination('ctxt', self.instance, self.migration)
        restarted.hypervisor.destroy_incoming.assert_called_once_with(
            'instance-1')
        kwargs = self.driver.rollback_live_migration_at_destination.\
            call_args.kwargs
        self.assertTrue(kwargs['destroy_disks'])
        self.assertEqual([], restarted.journal.migration_uuids())

    def test_revert_never_destroys_a_running_guest(self):
        endpoint = self.endpoint()
        endpoint.journal.write('mig-1', {
            'instance_uuid': 'inst-1', 'domain_name': 'instance-1',
            'attachment_ids': {},
            'migrate_data': self.migrate_data().obj_to_primitive()})
        self.driver.multidest_guest_running.return_value = True
        self.assertRaises(exceptions.DestinationFailed,
                          endpoint.revert_destination, 'ctxt',
                          self.instance, self.migration)
        self.driver.rollback_live_migration_at_destination.assert_not_called()

    def test_a_refused_revert_keeps_the_destination_for_its_resume(self):
        endpoint = self.prepared_endpoint()
        prepared = endpoint._destinations['mig-1']
        with mock.patch.object(prepared.guest, 'is_running',
                               return_value=True):
            self.assertRaises(exceptions.DestinationFailed,
                              endpoint.revert_destination, 'ctxt',
                              self.instance, self.migration)
        self.assertIs(prepared, endpoint._destinations['mig-1'])
        self.assertEqual(['mig-1'], endpoint.journal.migration_uuids())

    def stored_instance(self, **system_metadata):
        stored = mock.Mock(system_metadata=system_metadata)
        patcher = mock.patch.object(objects.Instance, 'get_by_uuid',
                                    return_value=stored)
        patcher.start()
        self.addCleanup(patcher.stop)

    def completed_destination(self):
        endpoint = self.endpoint()
        endpoint.prepare_destination('ctxt', self.instance, self.migration,
                                     SECRET_HEX, False, self.migrate_data())
        prepared = endpoint._destinations['mig-1']
        prepared.guest.status = 'completed'
        return endpoint, prepared.guest

    def test_only_the_recorded_winner_resumes(self):
        endpoint, guest = self.completed_destination()
        self.stored_instance(multidest_active='true',
                             multidest_winner='mig-2')
        self.assertRaises(exceptions.CopyMayHaveRun,
                          endpoint.resume_destination, 'ctxt',
                          self.instance, self.migration)
        self.assertFalse(guest.resumed)

    def test_recorded_winner_resumes_and_forgets_its_record(self):
        endpoint, guest = self.completed_destination()
        self.stored_instance(multidest_active='true',
                             multidest_winner='mig-1')
        endpoint.resume_destination('ctxt', self.instance, self.migration)
        self.assertTrue(guest.resumed)
        self.assertEqual([], endpoint.journal.migration_uuids())
        self.assertEqual({}, fake._REGISTRY.agents)

    def test_cleanup_after_restart_keeps_migrations_in_progress(self):
        endpoint = self.endpoint()
        record = {'instance_uuid': 'inst-1', 'domain_name': 'instance-1',
                  'attachment_ids': {},
                  'migrate_data': self.migrate_data().obj_to_primitive()}
        endpoint.journal.write('mig-1', record)
        self.instance.system_metadata = {
            vocabulary.SYSMETA_ACTIVE: vocabulary.SYSMETA_ACTIVE_VALUE}
        for status, reverted in (('running', False), ('cancelled', True)):
            self.migration.status = status
            with mock.patch.object(objects.Migration, 'get_by_uuid',
                                   return_value=self.migration), \
                    mock.patch.object(objects.Instance, 'get_by_uuid',
                                      return_value=self.instance):
                endpoint.cleanup_after_restart('ctxt')
            self.assertEqual(
                reverted,
                self.driver.rollback_live_migration_at_destination.called,
                status)
        self.assertEqual([], endpoint.journal.migration_uuids())

    def test_resume_asked_again_after_a_lost_reply_succeeds(self):
        endpoint, guest = self.completed_destination()
        self.stored_instance(multidest_active='true',
                             multidest_winner='mig-1')
        endpoint.resume_destination('ctxt', self.instance, self.migration)
        self.assertTrue(guest.resumed)
        self.driver.multidest_guest_running.return_value = True
        endpoint.resume_destination('ctxt', self.instance, self.migration)
        self.driver.multidest_guest_running.return_value = False
        self.assertRaises(exceptions.DestinationFailed,
                          endpoint.resume_destination, 'ctxt',
                          self.instance, self.migration)

    def test_a_prepare_the_conductor_gave_up_meanwhile_reverts_itself(self):
        endpoint = self.endpoint()

        def given_up(*args, **kwargs):
            # Recovery failed this destination while the prepare ran.
            self.migration.status = 'failed'
            return SOURCE_XML

        self.driver.multidest_destination_xml.side_effect = given_up
        error = self.assertRaises(
            exceptions.DestinationFailed, endpoint.prepare_destination,
            'ctxt', self.instance, self.migration, SECRET_HEX, False,
            self.migrate_data())
        self.assertIn('gave migration mig-1 up', str(error))
        self.driver.rollback_live_migration_at_destination.assert_called_once()
        self.assertEqual({}, endpoint._destinations)
        self.assertEqual([], endpoint.journal.migration_uuids())

    def test_a_revert_during_the_prepare_fences_it(self):
        endpoint = self.endpoint()

        def reverted(*args, **kwargs):
            # Recovery's revert arrives while the prepare runs; the
            # Migration is set failed only once that revert returned.
            endpoint.revert_destination('ctxt', self.instance,
                                        self.migration)
            return SOURCE_XML

        self.driver.multidest_destination_xml.side_effect = reverted
        error = self.assertRaises(
            exceptions.DestinationFailed, endpoint.prepare_destination,
            'ctxt', self.instance, self.migration, SECRET_HEX, False,
            self.migrate_data())
        self.assertIn('gave migration mig-1 up', str(error))
        self.assertEqual({}, endpoint._destinations)
        self.assertEqual([], endpoint.journal.migration_uuids())
        self.assertEqual(set(), endpoint._fenced)

    def revert_while_checking_still_wanted(self, given_up):
        """A revert comes after the prepare registered its destination.

        Recovery's revert reaches the prepare while it checks that its
        destination is still wanted, after it was in the table.
        """
        endpoint = self.endpoint()
        still_wanted = endpoint._still_wanted

        def reverted_meanwhile(*args):
            endpoint.revert_destination('ctxt', self.instance,
                                        self.migration)
            if given_up:
                # The group sets it failed once the revert returned.
                self.migration.status = 'failed'
            return still_wanted(*args)

        endpoint._still_wanted = reverted_meanwhile
        error = self.assertRaises(
            exceptions.DestinationFailed, endpoint.prepare_destination,
            'ctxt', self.instance, self.migration, SECRET_HEX, False,
            self.migrate_data())
        self.assertIn('gave migration mig-1 up', str(error))
        # Reverted once, by the revert; nothing left.
        self.driver.rollback_live_migration_at_destination.assert_called_once()
        self.assertEqual({}, endpoint._destinations)
        self.assertEqual([], endpoint.journal.migration_uuids())
        self.assertEqual(set(), endpoint._fenced)

    def test_a_revert_after_the_fence_check_while_still_wanted(self):
        self.revert_while_checking_still_wanted(given_up=False)

    def test_a_revert_after_the_fence_check_once_given_up(self):
        self.revert_while_checking_still_wanted(given_up=True)

    def prepared_endpoint(self):
        endpoint = self.endpoint()
        endpoint.prepare_destination('ctxt', self.instance, self.migration,
                                     SECRET_HEX, False, self.migrate_data())
        self.instance.system_metadata = dict(self.stored.system_metadata)
        return endpoint

    def test_sweep_keeps_what_its_live_conductor_holds(self):
        endpoint = self.prepared_endpoint()
        self.instance.system_metadata[vocabulary.SYSMETA_OWNER] = 'cond'
        with mock.patch.object(objects.Instance, 'get_by_uuid',
                               return_value=self.instance), \
                mock.patch.object(objects.Service, 'get_by_host_and_binary'):
            endpoint.servicegroup_api = mock.Mock(**{
                'service_is_up.return_value': True})
            endpoint.sweep('ctxt')
        self.assertEqual(['mig-1'], endpoint.journal.migration_uuids())
        self.driver.rollback_live_migration_at_destination.assert_not_called()

    def test_sweep_reverts_a_destination_whose_lease_expired(self):
        endpoint = self.prepared_endpoint()
        self.instance.system_metadata[vocabulary.SYSMETA_OWNER] = 'cond'
        with mock.patch.object(objects.Instance, 'get_by_uuid',
                               return_value=self.instance), \
                mock.patch.object(objects.Service, 'get_by_host_and_binary'):
            endpoint.servicegroup_api = mock.Mock(**{
                'service_is_up.return_value': False})
            endpoint.sweep('ctxt')
        self.assertEqual([], endpoint.journal.migration_uuids())
        self.assertEqual({}, endpoint._destinations)
        self.driver.rollback_live_migration_at_destination.assert_called_once()

    def test_sweep_reverts_what_the_conductor_gave_up(self):
        endpoint = self.prepared_endpoint()
        self.migration.status = 'failed'
        with mock.patch.object(objects.Instance, 'get_by_uuid',
                               return_value=self.instance):
            endpoint.sweep('ctxt')
        self.assertEqual([], endpoint.journal.migration_uuids())
        self.driver.rollback_live_migration_at_destination.assert_called_once()

    def test_sweep_leaves_a_prepare_in_flight_alone(self):
        endpoint = self.prepared_endpoint()
        self.migration.status = 'failed'
        endpoint._preparing.add('mig-1')
        endpoint.sweep('ctxt')
        self.assertEqual(['mig-1'], endpoint.journal.migration_uuids())

    def test_cleanup_after_restart_reverts_abandoned_groups(self):
        endpoint = self.endpoint()
        endpoint.journal.write('mig-1', {
            'instance_uuid': 'inst-1', 'domain_name': 'instance-1',
            'attachment_ids': {},
            'migrate_data': self.migrate_data().obj_to_primitive()})
        self.instance.system_metadata = {
            vocabulary.SYSMETA_LAST_RESULT: '{"result": "failed"}'}
        self.migration.status = 'running'
        with mock.patch.object(objects.Migration, 'get_by_uuid',
                               return_value=self.migration), \
                mock.patch.object(objects.Instance, 'get_by_uuid',
                                  return_value=self.instance):
            endpoint.cleanup_after_restart('ctxt')
        self.driver.rollback_live_migration_at_destination.assert_called_once()
        self.assertEqual([], endpoint.journal.migration_uuids())


class SourceSideTest(EndpointTestBase):

    def setUp(self):
        super().setUp()
        self.instance.host = 'src'
        self.source = self.endpoint(host='src')
        self.dest = self.endpoint(host='dst')

    def stream(self, warm_up=False):
        result = self.dest.prepare_destination(
            'ctxt', self.instance, self.migration, SECRET_HEX, False,
            self.migrate_data())
        saved = threading.Event()
        self.migration.save.side_effect = lambda: saved.set()
        with mock.patch.object(objects.Migration, 'get_by_uuid',
                               return_value=self.migration):
            self.source.start_stream(
                'ctxt', self.instance,
                [{'migration_uuid': 'mig-1', 'host': 'dst',
                  'agent_address': result['agent_address']}],
                SECRET_HEX, 'star', warm_up)
        return saved

    def test_stream_completes_and_records_progress(self):
        saved = self.stream()
        self.assertEqual('completed', self.dest.wait_destination(
            'ctxt', self.instance, self.migration, 10))
        self.assertTrue(saved.wait(10))
        stream = self.source._stream(self.instance)
        self.assertTrue(stream.wait(10))
        self.assertEqual(source_stream.UNLIMITED_BANDWIDTH,
                         stream.source.max_bandwidth)
        self.assertEqual(fake.DEFAULT_MEMORY, self.migration.memory_total)
        status = self.source.source_status('ctxt', self.instance)
        self.assertEqual('completed', status['state'])
        self.assertEqual('complete', status['destinations']['dst']['state'])

    def test_disk_progress_lands_in_nova_migration_fields(self):
        """The counters the migrations API shows as disk_*_bytes."""
        migration = objects.Migration(uuid=MIGRATION_UUID,
                                      dest_compute='dst')
        migration.obj_reset_changes()
        record = self.source._progress_recorder(
            {'dst': migration}, lambda: {'dst': disk_copy.DiskProgress(
                64 << 20, 16 << 20, 48 << 20)})
        with mock.patch.object(migration, 'save') as save:
            record(hypervisor.MigrationStats(
                status=vocabulary.QemuStatus.ACTIVE, total=1 << 20), {})
        save.assert_called_once_with()
        self.assertEqual((64 << 20, 16 << 20, 48 << 20),
                         (migration.disk_total, migration.disk_processed,
                          migration.disk_remaining))

    def test_nova_settings_reach_the_source_and_every_destination(self):
        self.config.config(group='libvirt',
                           live_migration_parallel_connections=3,
                           live_migration_permit_auto_converge=True,
                           live_migration_bandwidth=200)
        with mock.patch.object(self.source.hypervisor, 'source_xml',
                               return_value=SOURCE_XML):
            source_guest = self.source.get_source_guest('ctxt',
                                                        self.instance)
        self.assertEqual({'multifd': True}, source_guest['capabilities'])
        self.assertEqual(3, source_guest['multifd_channels'])
        self.dest.compute_rpcapi.get_source_guest.return_value = source_guest
        self.stream()
        prepared = self.dest._destinations['mig-1']
        self.assertEqual({'multifd': True}, prepared.guest.capabilities)
        self.assertEqual(3, prepared.guest.multifd_channels)
        stream = self.source._stream(self.instance)
        self.assertTrue(stream.wait(10))
        self.assertEqual({'auto-converge': True, 'multifd': True,
                          'events': True}, stream.source.capabilities)
        self.assertEqual(3, stream.source.multifd_channels)
        self.assertEqual(200 * (1 << 20), stream.source.max_bandwidth)
        self.assertEqual(compute_endpoint.MULTIFD_LISTEN, stream.relay.listen)

    def test_second_stream_of_an_instance_is_ignored(self):
        self.stream(warm_up=True)
        first = self.source._stream(self.instance)
        self.source.start_stream('ctxt', self.instance, [], SECRET_HEX,
                                 'star', False)
        self.assertIs(first, self.source._stream(self.instance))

    def test_stream_that_cannot_start_reports_why(self):
        self.source.hypervisor.create_relay = mock.Mock(
            side_effect=exceptions.AllDestinationsFailed(reasons='dst: no'))
        self.stream()
        status = self.source.source_status('ctxt', self.instance)
        self.assertEqual('failed', status['state'])
        self.assertIn('dst: no', status['error'])
        self.assertFalse(self.source.has_stream(self.instance))

    def test_a_1_1_caller_gets_the_start_error_at_once(self):
        self.source.hypervisor.create_relay = mock.Mock(
            side_effect=exceptions.AllDestinationsFailed(reasons='dst: no'))
        error = self.assertRaises(
            exceptions.SourceStreamFailed, self.source.start_stream, 'ctxt',
            self.instance, [], SECRET_HEX, 'star', False, report_errors=True)
        self.assertIn('src could not start', str(error))
        self.assertIn('dst: no', str(error))
        self.assertFalse(self.source.has_stream(self.instance))

    def test_a_finished_stream_makes_room_for_the_next_round(self):
        self.stream()
        first = self.source._stream(self.instance)
        self.assertTrue(first.wait(10))
        self.stream()
        self.assertIsNot(first, self.source._stream(self.instance))

    def test_abort_keeps_the_source_running(self):
        self.stream(warm_up=True)
        self.assertTrue(self.source.abort_stream('ctxt', self.instance))
        self.assertEqual('failed', self.dest.wait_destination(
            'ctxt', self.instance, self.migration, 10))

    def test_switch_over_ends_warm_up(self):
        self.stream(warm_up=True)
        self.assertTrue(self.source.switch_over('ctxt', self.instance))
        self.assertEqual('completed', self.dest.wait_destination(
            'ctxt', self.instance, self.migration, 10))

    def test_source_calls_refuse_another_host(self):
        self.instance.host = 'elsewhere'
        self.assertRaises(exceptions.InvalidSettings,
                          self.source.source_status, 'ctxt', self.instance)

    def test_source_never_resumes_once_a_winner_was_elected(self):
        stored = mock.Mock(system_metadata={
            vocabulary.SYSMETA_ACTIVE: vocabulary.SYSMETA_ACTIVE_VALUE,
            vocabulary.SYSMETA_WINNER: 'mig-1'})
        with mock.patch.object(objects.Instance, 'get_by_uuid',
                               return_value=stored):
            self.assertRaises(exceptions.CopyMayHaveRun,
                              self.source.resume_source, 'ctxt',
                              self.instance)

    def test_cleanup_source_refuses_while_the_guest_runs_here(self):
        self.driver.multidest_guest_running.return_value = True
        self.assertRaises(exceptions.InvalidSettings,
                          self.source.cleanup_source, 'ctxt', self.instance,
                          self.migration)
        self.driver.multidest_cleanup_source.assert_not_called()

    def test_cleanup_source_keeps_disks_without_migrate_data(self):
        self.source.cleanup_source('ctxt', self.instance, self.migration)
        kwargs = self.driver.multidest_cleanup_source.call_args.kwargs
        self.assertFalse(kwargs['destroy_disks'])
