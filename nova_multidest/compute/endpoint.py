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

"""The compute RPC endpoint of multi-destination live migration.

Served on ``[multidest] compute_topic`` by every compute host running
MultiDestLibvirtDriver (``driver.py``). The conductor drives a migration
through it: it prepares each destination (Nova's pre-live-migration work
plus a paused incoming domain and a stream agent), starts the one
outgoing stream on the source, waits for destinations, resumes the
elected one and reverts the others.

Nova keeps per-instance state that assumes a single destination
(``instance.migration_context``, ``bdm.attachment_id``, the driver's
``active_migrations``, ``Migration.dest_compute``...). This endpoint never
writes any of it: what each destination did is kept per migration, in
memory and in a local journal, and the conductor updates Nova's records
once the winner is known.
"""

import dataclasses
import functools
import os
import threading
import time

from oslo_log import log as logging
import oslo_messaging as messaging
from oslo_serialization import jsonutils
from oslo_utils import excutils

from nova import exception as nova_exception
from nova.network import neutron
from nova import objects
from nova import servicegroup
from nova import thread_pool_factory
from nova.virt import driver as virt_driver
from nova.volume import cinder

from nova_multidest.compute import journal as journal_mod
from nova_multidest.compute import rpcapi
from nova_multidest import conf
from nova_multidest.dataplane import hypervisor as hypervisor_mod
from nova_multidest.dataplane import protocol
from nova_multidest.dataplane import source_stream
from nova_multidest import exceptions
from nova_multidest.virt import migration_settings
from nova_multidest import vocabulary

CONF = conf.CONF
LOG = logging.getLogger(__name__)

MiB = 1 << 20
PROGRESS_SAVE_INTERVAL = 1.0
MULTIFD_LISTEN = 'tcp:127.0.0.1:0'
# Seconds between two looks for destinations whose lease expired.
SWEEP_INTERVAL = 60
# Holds an instance's place in the stream table while its stream starts.
_STARTING = object()


def _spawn(func, *args, **kwargs):
    return thread_pool_factory.spawn_on(
        thread_pool_factory.ExecutorType.LONG_TASK, func, *args, **kwargs)


class _PreparedDestination(object):
    """What this host made for one destination of one migration."""

    def __init__(self, migration_uuid, record):
        self.migration_uuid = migration_uuid
        self.record = record
        self.guest = None
        self.changed = threading.Condition()

    def on_event(self, event):
        with self.changed:
            self.changed.notify_all()


class ComputeEndpoint(object):
    """RPC endpoint; one per compute host, served by the driver.

    ``driver`` is the host's ``virt/driver.py`` LibvirtDriver and
    ``hypervisor`` the extension it built (``virt/hypervisors/``).
    """

    target = messaging.Target(version=rpcapi.RPC_API_VERSION)

    def __init__(self, driver, host, hypervisor,
                 version=rpcapi.RPC_API_VERSION):
        if version != rpcapi.RPC_API_VERSION:
            # A driver pinned to an older version (tests of upgrades).
            self.target = messaging.Target(version=version)
        self.driver = driver
        self.host = host
        self.hypervisor = hypervisor
        self.compute_rpcapi = rpcapi.ComputeAPI()
        self.network_api = neutron.API()
        self.volume_api = cinder.API()
        self.journal = journal_mod.DestinationJournal(
            os.path.join(CONF.instances_path, 'multidest-journal', host))
        self._lock = threading.Lock()
        self._destinations = {}
        self._streams = {}
        self._start_errors = {}
        self._tls = None
        # Migration uuids whose prepare_destination call is in progress,
        # and those of them a revert reached meanwhile (fenced: the
        # prepare reverts what it made when it ends).
        self._preparing = set()
        self._fenced = set()
        self._swept = threading.Event()
        self.servicegroup_api = servicegroup.API()

    # -- checks ------------------------------------------------------------

    def _check_destination_side(self, instance, migration):
        if (migration.dest_compute != self.host or
                migration.source_compute == self.host or
                instance.host == self.host):
            raise exceptions.InvalidSettings(
                reason='host %s is not a destination of migration %s '
                       '(source %s, destination %s, instance on %s); the '
                       'request went to the wrong host' % (
                           self.host, migration.uuid,
                           migration.source_compute,
                           migration.dest_compute, instance.host))

    def _check_source_side(self, instance):
        if instance.host != self.host:
            raise exceptions.InvalidSettings(
                reason='instance %s runs on %s, not on %s; the request '
                       'went to the wrong host' % (instance.uuid,
                                                   instance.host, self.host))

    # -- destination side ----------------------------------------------------

    def prepare_destination(self, context, instance, migration, secret,
                            block_migration, migrate_data=None):
        self._check_destination_side(instance, migration)
        if migrate_data is None:
            raise exceptions.InvalidSettings(
                reason='prepare_destination needs the migrate data that '
                       'check_can_live_migrate_destination returned')
        copy_disks = bool(migrate_data.obj_attr_is_set('block_migration') and
                          migrate_data.block_migration)
        secret = rpcapi.decode_secret(secret)
        record = {'instance_uuid': instance.uuid,
                  'domain_name': instance.name,
                  'attachment_ids': {},
                  'migrate_data': migrate_data.obj_to_primitive()}
        prepared = _PreparedDestination(migration.uuid, record)
        self.journal.write(migration.uuid, record)
        with self._lock:
            self._preparing.add(migration.uuid)
        try:
            return self._prepare(context, instance, migration, prepared,
                                 secret, migrate_data, copy_disks)
        finally:
            with self._lock:
                self._preparing.discard(migration.uuid)
                self._fenced.discard(migration.uuid)

    def _prepare(self, context, instance, migration, prepared, secret,
                 migrate_data, copy_disks=False):
        record = prepared.record
        disk_address = None
        try:
            source = self.compute_rpcapi.get_source_guest(
                context, instance, block_migration=copy_disks)
            bdms = self._attach_volumes(context, instance, prepared)
            block_device_info = virt_driver.get_block_device_info(
                instance, bdms)
            network_info = self.network_api.get_instance_nw_info(
                context, instance)
            # With local disks, Nova's own pre-live-migration makes the
            # instance directory and the disks over this host's image
            # cache; the revert removes them (destroy_disks).
            migrate_data = self.driver.pre_live_migration(
                context, instance, block_device_info, network_info,
                source.get('disk_info') if copy_disks else None,
                migrate_data)
            record['migrate_data'] = migrate_data.obj_to_primitive()
            self.journal.write(migration.uuid, record)
            xml = self.driver.multidest_destination_xml(
                instance, source['xml'], migrate_data)
            prepared.guest = self.hypervisor.destination_from_xml(
                self.host, xml)
            prepared.guest.subscribe(prepared.on_event)
            # A source of an older release names no stream settings.
            prepared.guest.start_incoming(
                source.get('capabilities'),
                source.get('multifd_channels', 0))
            address = self._open_stream(prepared.guest, secret)
            if copy_disks:
                disk_address = self._open_disk_stream(
                    prepared.guest, secret, source['disks'])
        except Exception:
            with excutils.save_and_reraise_exception():
                LOG.exception('Preparing %s as a destination failed',
                              self.host, instance=instance)
                try:
                    self._revert(context, instance, prepared,
                                 delete_attachments=True)
                except Exception:
                    # The journal keeps what is left for the conductor's
                    # revert or the next start of this compute.
                    LOG.exception('Reverting the failed destination %s '
                                  'failed', self.host, instance=instance)
        with self._lock:
            self._destinations[migration.uuid] = prepared
        wanted = self._still_wanted(context, instance, migration.uuid)
        # The fence is read last: a revert may come during the check.
        with self._lock:
            given_up = migration.uuid in self._fenced or not wanted
            # Whoever takes a destination out of the table reverts it.
            mine = (given_up and
                    self._destinations.get(migration.uuid) is prepared)
            if mine:
                del self._destinations[migration.uuid]
        if given_up:
            if mine:
                self._revert(context, instance, prepared,
                             delete_attachments=True)
            raise exceptions.DestinationFailed(
                destination=self.host,
                reason='the conductor gave migration %s up while this host '
                       'prepared it; it was reverted here' % migration.uuid)
        LOG.info('Destination %s ready, stream agent on %s:%s', self.host,
                 address[0], address[1], instance=instance)
        result = {'agent_address': [address[0], address[1]],
                  'migrate_data': migrate_data,
                  'attachment_ids': dict(record['attachment_ids'])}
        if disk_address is not None:
            result['disk_agent_address'] = list(disk_address)
        return result

    def _attach_volumes(self, context, instance, prepared):
        """A Cinder attachment for this host per volume, BDMs untouched.

        The returned BDMs carry this host's attachment and connection in
        memory only: ``bdm.attachment_id`` must keep naming the source's
        attachment until the conductor elects a winner.
        """
        bdms = objects.BlockDeviceMappingList.get_by_instance_uuid(
            context, instance.uuid)
        connector = None
        for bdm in bdms:
            if not bdm.is_volume:
                continue
            if bdm.attachment_id is None:
                raise exceptions.InvalidSettings(
                    reason='volume %s of instance %s is attached with the '
                           'pre-3.44 Cinder flow; detach and re-attach it '
                           'first' % (bdm.volume_id, instance.uuid))
            if connector is None:
                connector = self.driver.get_volume_connector(instance)
            attachment = self.volume_api.attachment_create(
                context, bdm.volume_id, instance.uuid, connector=connector,
                mountpoint=bdm.device_name)
            prepared.record['attachment_ids'][bdm.volume_id] = (
                attachment['id'])
            self.journal.write(prepared.migration_uuid, prepared.record)
            connection_info = attachment.get('connection_info')
            if connection_info is None:
                connection_info = self.volume_api.attachment_get(
                    context, attachment['id'])['connection_info']
            bdm.attachment_id = attachment['id']
            bdm.connection_info = jsonutils.dumps(connection_info)
        return bdms

    def _open_disk_stream(self, guest, secret, disks):
        """Export the paused guest's disks; start their agent and writer."""
        exports = guest.export_disks(
            [hypervisor_mod.LocalDisk(**disk) for disk in disks])
        return self._open_stream(
            guest, secret, functools.partial(guest.open_disk_stream,
                                             exports=exports))

    def _open_stream(self, guest, secret, opener=None):
        """Start the agent on the first free port of the configured range."""
        opener = opener or guest.open_stream
        listen_host = (CONF.multidest.listen_address or
                       CONF.libvirt.live_migration_inbound_addr or
                       CONF.my_ip)
        # Sources must be told an address they can reach.
        advertised = (CONF.my_ip if listen_host in ('0.0.0.0', '::')
                      else None)
        server_tls, client_tls = self._tls_contexts()
        tls_args = {}
        if server_tls is not None:
            tls_args = {'tls': server_tls, 'forward_tls': client_tls}
        last_error = None
        for port in range(CONF.multidest.port_min,
                          CONF.multidest.port_max + 1):
            try:
                address = opener(
                    secret, listen=(listen_host, port), **tls_args)
            except OSError as exc:
                last_error = exc
                continue
            return (advertised or address[0], address[1])
        raise exceptions.DestinationFailed(
            destination=self.host,
            reason='no free port in [multidest] port_min..port_max (%d-%d) '
                   'on %s: %s; widen the range' % (
                       CONF.multidest.port_min, CONF.multidest.port_max,
                       listen_host, last_error))

    def _tls_contexts(self):
        """(server, client) TLS contexts of stream hops, or (None, None)."""
        files = migration_settings.tls_files()
        if files is None:
            return None, None
        if self._tls is None:
            self._tls = protocol.make_tls_contexts(*files)
        return self._tls

    def wait_destination(self, context, instance, migration, timeout):
        self._check_destination_side(instance, migration)
        with self._lock:
            prepared = self._destinations.get(migration.uuid)
        if prepared is None or prepared.guest is None:
            LOG.warning('No incoming stream for migration %s here (was '
                        'nova-compute restarted?)', migration.uuid,
                        instance=instance)
            return vocabulary.WaitOutcome.FAILED
        deadline = time.monotonic() + timeout
        with prepared.changed:
            while True:
                status = prepared.guest.migration_status()
                copied = prepared.guest.disks_copied()
                if copied is False:
                    return vocabulary.WaitOutcome.FAILED
                if status == vocabulary.QemuStatus.COMPLETED:
                    # Only a copy holding the disks too may be elected;
                    # their writer may report a moment after the memory.
                    if copied or not prepared.guest.copies_disks:
                        return vocabulary.WaitOutcome.COMPLETED
                elif status in vocabulary.QemuStatus.FINAL:
                    return vocabulary.WaitOutcome.FAILED
                left = deadline - time.monotonic()
                if left <= 0:
                    return vocabulary.WaitOutcome.TIMEOUT
                # The guest's events notify; nothing polls.
                prepared.changed.wait(left)

    def resume_destination(self, context, instance, migration):
        """Let the recorded winner's guest run; idempotent.

        Asked again after a reply was lost, a winner whose guest already
        runs here answers success: the conductor must never take a lost
        reply for a failure and elect another copy. An error means the
        guest does not run.
        """
        self._check_destination_side(instance, migration)
        stored = self._group_records(context, instance)
        winner = stored.get(vocabulary.SYSMETA_WINNER)
        if winner != migration.uuid:
            raise exceptions.CopyMayHaveRun(
                instance_uuid=instance.uuid, host=self.host,
                reason='the recorded winner is %s, not migration %s'
                       % (winner, migration.uuid))
        with self._lock:
            prepared = self._destinations.get(migration.uuid)
        if prepared is None or prepared.guest is None:
            if self.driver.multidest_guest_running(instance):
                LOG.info('Guest already runs on %s for migration %s',
                         self.host, migration.uuid, instance=instance)
                return
            raise exceptions.DestinationFailed(
                destination=self.host,
                reason='it holds no incoming guest for migration %s; elect '
                       'another destination' % migration.uuid)
        try:
            prepared.guest.resume()
        except Exception:
            if not prepared.guest.is_running():
                raise
            LOG.exception('Resuming reported an error, but the guest runs',
                          instance=instance)
        try:
            prepared.guest.close_stream()
            with self._lock:
                self._destinations.pop(migration.uuid, None)
            self.journal.delete(migration.uuid)
        except Exception:
            # The guest runs: the answer must say so.
            LOG.exception('Cleaning up after the resume failed',
                          instance=instance)
        LOG.info('Guest resumed on %s for migration %s', self.host,
                 migration.uuid, instance=instance)

    def revert_destination(self, context, instance, migration):
        self._check_destination_side(instance, migration)
        with self._lock:
            if migration.uuid in self._preparing:
                # The group gives this destination up before its prepare
                # ended: the prepare must not hand over what it makes.
                self._fenced.add(migration.uuid)
            # Taken out of the table, it is this revert's alone.
            prepared = self._destinations.pop(migration.uuid, None)
        if prepared is None:
            record = self.journal.read(migration.uuid)
            if record is None:
                LOG.info('Nothing to revert here for migration %s',
                         migration.uuid, instance=instance)
                return
            self._revert(context, instance,
                         _PreparedDestination(migration.uuid, record),
                         delete_attachments=False)
            return
        try:
            self._revert(context, instance, prepared,
                         delete_attachments=False)
        except Exception:
            with excutils.save_and_reraise_exception():
                with self._lock:
                    self._destinations.setdefault(migration.uuid, prepared)

    def _revert(self, context, instance, prepared, delete_attachments):
        """Remove every trace of one destination from this host.

        Never removes a running guest: once a copy has run it is the only
        one that may ever run again.
        """
        if prepared.guest is not None:
            if prepared.guest.is_running():
                raise exceptions.DestinationFailed(
                    destination=self.host,
                    reason='its guest is running, so it is the winner and '
                           'cannot be reverted')
            prepared.guest.destroy()
        elif self.driver.multidest_guest_running(instance):
            raise exceptions.DestinationFailed(
                destination=self.host,
                reason='its guest is running, so it is the winner and '
                       'cannot be reverted')
        else:
            # No handle survived a restart: the extension finds its own.
            self.hypervisor.destroy_incoming(prepared.record['domain_name'])
        record = prepared.record
        migrate_data = objects.LibvirtLiveMigrateData.obj_from_primitive(
            record['migrate_data'])
        self._disconnect_volumes(context, instance, record)
        network_info = self.network_api.get_instance_nw_info(context,
                                                             instance)
        block_device_info = virt_driver.get_block_device_info(
            instance, objects.BlockDeviceMappingList(objects=[]))
        shared = (migrate_data.obj_attr_is_set('is_shared_block_storage') and
                  migrate_data.is_shared_block_storage or
                  migrate_data.obj_attr_is_set('is_shared_instance_path') and
                  migrate_data.is_shared_instance_path)
        self.driver.rollback_live_migration_at_destination(
            context, instance, network_info, block_device_info,
            destroy_disks=not shared, migrate_data=migrate_data)
        if delete_attachments:
            for attachment_id in record['attachment_ids'].values():
                try:
                    self.volume_api.attachment_delete(context, attachment_id)
                except Exception:
                    LOG.exception('Deleting attachment %s failed',
                                  attachment_id, instance=instance)
        self.journal.delete(prepared.migration_uuid)
        LOG.info('Destination %s reverted for migration %s', self.host,
                 prepared.migration_uuid, instance=instance)

    def _disconnect_volumes(self, context, instance, record):
        for volume_id, attachment_id in record['attachment_ids'].items():
            try:
                connection_info = self.volume_api.attachment_get(
                    context, attachment_id)['connection_info']
                self.driver.multidest_disconnect_volume(
                    context, connection_info, instance)
            except Exception:
                LOG.exception('Disconnecting volume %s failed', volume_id,
                              instance=instance)

    # -- source side -------------------------------------------------------

    def get_source_guest(self, context, instance, block_migration=False):
        self._check_source_side(instance)
        settings = migration_settings.stream_settings(instance)
        result = {'xml': self.hypervisor.source_xml(instance.name),
                  'capabilities': settings.shared_capabilities(),
                  'multifd_channels': settings.multifd_channels}
        if block_migration:
            bdms = objects.BlockDeviceMappingList.get_by_instance_uuid(
                context, instance.uuid)
            result['disk_info'] = self.driver.get_instance_disk_info(
                instance, virt_driver.get_block_device_info(instance, bdms))
            result['disks'] = [dataclasses.asdict(disk) for disk in
                               self._local_disks(context, instance)]
        return result

    def _local_disks(self, context, instance):
        """The disks Nova's block migration would copy, as mirrored.

        Raises DiskNotMirrorable naming a disk that cannot be mirrored.
        """
        devices = self.driver.multidest_copied_devices(context, instance)
        return self.hypervisor.source(instance.name).local_disks(devices)

    def check_source_disks(self, context, instance):
        """None, or why a disk of the instance cannot be copied."""
        self._check_source_side(instance)
        try:
            self._local_disks(context, instance)
        except exceptions.DiskNotMirrorable as exc:
            return str(exc)
        return None

    def start_stream(self, context, instance, destinations, secret,
                     topology, warm_up, report_errors=False,
                     block_migration=False):
        """Start the one outgoing stream of the instance.

        With ``report_errors`` (1.2, a call) a stream that cannot start
        raises its error to the conductor; a 1.0 cast only logs it. With
        ``block_migration`` (1.3) the local disks are copied too.
        """
        self._check_source_side(instance)
        with self._lock:
            previous = self._streams.get(instance.uuid)
            if previous is _STARTING or (previous is not None and
                                         not previous.wait(0)):
                LOG.error('A stream of this instance is already running; '
                          'the request is ignored', instance=instance)
                return
            self._streams[instance.uuid] = _STARTING
            self._start_errors.pop(instance.uuid, None)
        if previous is not None:
            # A finished stream of an earlier round.
            previous.close()
        stream = None
        try:
            stream = self._create_stream(context, instance, destinations,
                                         rpcapi.decode_secret(secret),
                                         topology, warm_up, block_migration)
            with self._lock:
                self._streams[instance.uuid] = stream
            stream.start(_spawn)
        except Exception as exc:
            LOG.exception('Starting the stream failed; the guest keeps '
                          'running here', instance=instance)
            with self._lock:
                self._streams.pop(instance.uuid, None)
                self._start_errors[instance.uuid] = str(exc)
            if stream is not None:
                stream.close()
            if report_errors:
                raise exceptions.SourceStreamFailed(host=self.host,
                                                    reason=exc)
            return
        LOG.info('Streaming to %s (%s)',
                 ', '.join(d['host'] for d in destinations), topology,
                 instance=instance)

    def _create_stream(self, context, instance, destinations, secret,
                       topology, warm_up, block_migration=False):
        migrations = {d['host']: objects.Migration.get_by_uuid(
            context, d['migration_uuid']) for d in destinations}
        source = self.hypervisor.source(instance.name)
        on_drop = functools.partial(self._on_drop, instance)
        settings = migration_settings.stream_settings(instance, warm_up)
        settings.validate()
        # QEMU opens each multifd channel itself, which it cannot do on a
        # descriptor handed over by nova-compute: a loopback port it can.
        listen = MULTIFD_LISTEN if settings.multifd_channels else None
        fanout = self.hypervisor.create_relay(
            secret, [(d['host'], tuple(d['agent_address']))
                     for d in destinations],
            topology=topology, lag_limit=CONF.multidest.lag_limit_mb * MiB,
            tls=self._tls_contexts()[1], listen=listen, on_drop=on_drop)
        disks = None
        if block_migration:
            try:
                disks = self.hypervisor.create_disk_copy(
                    source, self._local_disks(context, instance),
                    [(d['host'], tuple(d['disk_agent_address']))
                     for d in destinations], secret, topology=topology,
                    lag_limit=CONF.multidest.lag_limit_mb * MiB,
                    tls=self._tls_contexts()[1], on_drop=on_drop,
                    max_bandwidth=settings.max_bandwidth)
            except Exception:
                fanout.close()
                raise
        stream = source_stream.SourceStream(
            source, fanout, settings, disks=disks)
        stream.on_progress = self._progress_recorder(
            migrations, stream.disk_progress)
        return stream

    def _on_drop(self, instance, name, reason):
        LOG.warning('Destination %s dropped from the stream: %s', name,
                    reason, instance=instance)

    def _progress_recorder(self, migrations, disk_progress=dict):
        """Progress as ``openstack server migration show`` displays it.

        Each destination's Migration counts the stream bytes that reached
        that destination, and what the source still has to send; with
        local disks also the disk bytes that reached it, of those the
        source's mirrors know they must copy (Nova's own libvirt driver
        reports 0 for these).
        """
        last_saved = [0.0]

        def record(stats, progress):
            disks = disk_progress()
            final = stats.status in vocabulary.QemuStatus.FINAL
            now = time.monotonic()
            if not final and now - last_saved[0] < PROGRESS_SAVE_INTERVAL:
                return
            last_saved[0] = now
            for host, migration in migrations.items():
                destination = progress.get(host)
                complete = (stats.status == vocabulary.QemuStatus.COMPLETED and
                            destination is not None and
                            destination.state != vocabulary.StreamState.FAILED)
                # Nova's API schema allows null or >= 1 for these counters.
                migration.memory_total = stats.total or None
                migration.memory_processed = (
                    destination.bytes_sent if destination is not None
                    else stats.transferred) or None
                migration.memory_remaining = (
                    None if complete else stats.remaining or None)
                disk = disks.get(host)
                if disk is not None:
                    # Nova's Migration fields; its API adds "_bytes".
                    migration.disk_total = disk.total_bytes or None
                    migration.disk_processed = disk.processed_bytes or None
                    migration.disk_remaining = disk.remaining_bytes or None
                if migration.obj_what_changed():
                    migration.save()
        return record

    def _stream(self, instance):
        with self._lock:
            stream = self._streams.get(instance.uuid)
        return None if stream is _STARTING else stream

    def _pop_stream(self, instance):
        with self._lock:
            self._start_errors.pop(instance.uuid, None)
            stream = self._streams.pop(instance.uuid, None)
        return None if stream is _STARTING else stream

    def switch_over(self, context, instance):
        stream = self._stream(instance)
        if stream is None:
            LOG.warning('No multi-destination stream to switch over',
                        instance=instance)
            return False
        stream.switch_over()
        return True

    def abort_stream(self, context, instance):
        stream = self._stream(instance)
        if stream is None:
            LOG.info('No multi-destination stream to abort',
                     instance=instance)
            return False
        stream.abort()
        return True

    def ping(self, context):
        """What nova-multidest-status needs to know of this host.

        ``virt_type`` came after 1.1 without a version bump: callers read
        it with get() and older hosts simply leave it out.
        """
        return {'host': self.host, 'rpc_version': self.target.version,
                'virt_type': CONF.libvirt.virt_type}

    def source_status(self, context, instance):
        """The stream's state; 'failed' with 'error' if it never started."""
        self._check_source_side(instance)
        stream = self._stream(instance)
        if stream is None:
            with self._lock:
                error = self._start_errors.get(instance.uuid)
            if error is not None:
                return {'state': vocabulary.QemuStatus.FAILED, 'error': error,
                        'destinations': {}}
            return {'state': vocabulary.QemuStatus.NONE, 'destinations': {}}
        return stream.status()

    def _group_records(self, context, instance):
        """The instance's system metadata as stored, not as sent."""
        return objects.Instance.get_by_uuid(
            context, instance.uuid,
            expected_attrs=['system_metadata']).system_metadata

    def resume_source(self, context, instance):
        self._check_source_side(instance)
        elected = vocabulary.elected_migration(
            self._group_records(context, instance))
        if elected:
            raise exceptions.CopyMayHaveRun(
                instance_uuid=instance.uuid, host=self.host,
                reason='migration %s was elected and its copy may have run'
                       % elected)
        stream = self._pop_stream(instance)
        if stream is not None:
            stream.close()
            stream.wait(CONF.multidest.election_timeout)
        self.hypervisor.source(instance.name).resume()
        LOG.info('Guest runs on its source again', instance=instance)

    def cleanup_source(self, context, instance, migration,
                       migrate_data=None):
        if (migration.source_compute != self.host or
                migration.dest_compute == self.host):
            raise exceptions.InvalidSettings(
                reason='host %s is not the source of migration %s'
                       % (self.host, migration.uuid))
        if self.driver.multidest_guest_running(instance):
            raise exceptions.InvalidSettings(
                reason='the guest still runs on its source %s; resume the '
                       'winner first' % self.host)
        stream = self._pop_stream(instance)
        if stream is not None:
            stream.close()
        shared_path = shared_block = True
        if migrate_data is not None:
            shared_path = migrate_data.is_shared_instance_path
            shared_block = migrate_data.is_shared_block_storage
        network_info = self.network_api.get_instance_nw_info(context,
                                                             instance)
        self.driver.multidest_cleanup_source(
            context, instance, network_info,
            destroy_disks=not (shared_path or shared_block),
            migrate_data=migrate_data)
        LOG.info('Source copy removed from %s', self.host, instance=instance)

    # -- driver hooks --------------------------------------------------------

    def has_stream(self, instance):
        return self._stream(instance) is not None

    def close(self):
        """Close every relay and agent; the guests stay as they are."""
        self._swept.set()
        with self._lock:
            streams = [stream for stream in self._streams.values()
                       if stream is not _STARTING]
            prepared = list(self._destinations.values())
            self._streams.clear()
            self._destinations.clear()
        for stream in streams:
            stream.close()
        for destination in prepared:
            if destination.guest is not None:
                destination.guest.close_stream()

    def _still_wanted(self, context, instance, migration_uuid):
        """The conductor still holds this destination (its lease)."""
        try:
            migration = objects.Migration.get_by_uuid(context,
                                                      migration_uuid)
            stored = self._group_records(context, instance)
        except (nova_exception.MigrationNotFound,
                nova_exception.InstanceNotFound):
            return False
        return (migration.status in vocabulary.MigrationStatus.IN_PROGRESS
                and vocabulary.group_in_progress(stored) and
                self._owner_up(context, stored))

    def _owner_up(self, context, system_metadata):
        """False once the owning conductor's service is down."""
        owner = system_metadata.get(vocabulary.SYSMETA_OWNER)
        if owner is None:
            return True
        service = objects.Service.get_by_host_and_binary(
            context, owner, vocabulary.CONDUCTOR_BINARY)
        if service is None:
            # No record to judge the lease by: the conductors decide.
            return True
        return self.servicegroup_api.service_is_up(service)

    def start_sweeping(self, context, interval):
        """Sweep expired destinations every ``interval`` s until close()."""
        def loop():
            while not self._swept.wait(interval):
                self.sweep(context)
        # A thread of its own: it would hold a worker of Nova's long-task
        # pool (builds, snapshots, our streams) for the life of the service.
        threading.Thread(target=loop, name='multidest-sweep',
                         daemon=True).start()

    def sweep(self, context):
        """Revert the destinations whose lease expired.

        A destination prepared here lives while its Migration is in
        progress, its group runs and the group's conductor is up; a
        prepare still in flight is left to finish (it checks the same at
        its end). What a conductor gave up, or left when it died, goes.
        """
        for migration_uuid in self.journal.migration_uuids():
            with self._lock:
                if migration_uuid in self._preparing:
                    continue
            record = self.journal.read(migration_uuid)
            if record is None:
                continue
            try:
                self._cleanup_record(context, migration_uuid, record,
                                     lease=True)
            except Exception:
                LOG.exception('Sweeping the destination of migration %s '
                              'failed; it is retried', migration_uuid)

    def cleanup_after_restart(self, context):
        """Destroy what abandoned or finished migrations left here.

        Runs before the endpoint serves requests. A destination whose
        migration still runs is kept for the conductor, which reverts it
        (its stream died with the old process, so it reports failure).
        """
        for migration_uuid in self.journal.migration_uuids():
            record = self.journal.read(migration_uuid)
            if record is None:
                self.journal.delete(migration_uuid)
                continue
            try:
                self._cleanup_record(context, migration_uuid, record)
            except Exception:
                LOG.exception('Cleaning up after migration %s failed; it '
                              'is retried at the next start', migration_uuid)

    def _cleanup_record(self, context, migration_uuid, record, lease=False):
        try:
            migration = objects.Migration.get_by_uuid(context,
                                                      migration_uuid)
        except nova_exception.MigrationNotFound:
            migration = None
        try:
            instance = objects.Instance.get_by_uuid(
                context, record['instance_uuid'],
                expected_attrs=['system_metadata', 'flavor', 'info_cache'])
        except nova_exception.InstanceNotFound:
            instance = None
        if instance is None or instance.host == self.host:
            if instance is None:
                self.hypervisor.destroy_incoming(record['domain_name'])
            self.journal.delete(migration_uuid)
            return
        in_group = vocabulary.group_in_progress(instance.system_metadata)
        if (migration is not None and in_group and
                migration.status not in vocabulary.MigrationStatus.NOVA_FINAL
                and not (lease and not self._owner_up(
                    context, instance.system_metadata))):
            if not lease:
                LOG.info('Migration %s is still in progress; leaving this '
                         'destination to the conductor', migration_uuid,
                         instance=instance)
            return
        if vocabulary.elected_migration(
                instance.system_metadata) == migration_uuid:
            # The recorded winner: only the conductor may end it.
            return
        LOG.info('Removing the destination of finished, abandoned or '
                 'expired migration %s', migration_uuid, instance=instance)
        with self._lock:
            prepared = self._destinations.pop(migration_uuid, None)
        prepared = prepared or _PreparedDestination(migration_uuid, record)
        self._revert(context, instance, prepared, delete_attachments=False)
