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

"""The data plane's hypervisor interface over libvirt domains.

libvirt has no multi-destination migration and refuses a second
migration job on a domain, so the stream bypasses libvirt's migration
API and drives QEMU's own through QMP passthrough
(``virDomainQemuMonitorCommand``), on domains libvirt still manages:

* a destination is a transient domain created from the source's XML,
  started paused (``VIR_DOMAIN_START_PAUSED``) with ``-incoming defer``
  added through libvirt's QEMU namespace, then told ``migrate-incoming``;
  ``late-block-activate`` keeps shared disks inactive until it is elected;
* the source migrates into the relay over a connected socket handed to
  QEMU with ``getfd``, so no path or port of the host is ever opened to
  QEMU's user;
* the elected destination resumes, announces itself and is defined
  persistently; every other one is destroyed, which removes a transient
  domain entirely;
* local disks are copied as libvirt's block migration copies them, with
  the disk relay in place of the one destination: each paused
  destination serves its disks with QEMU's NBD server on a socket this
  process binds and hands over (``qmp_disks.Exports``), and the source
  mirrors each disk once into the relay (``qmp_disks.Mirrors``).

libvirt marks such domains tainted ("custom-monitor"); that is expected.
"""

import functools
import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from xml.etree import ElementTree

import libvirt
import libvirt_qemu
from oslo_log import log as logging

from nova_multidest.dataplane import hypervisor
from nova_multidest.dataplane import qmp_disks
from nova_multidest.dataplane import relay
from nova_multidest import exceptions
from nova_multidest.virt import hypervisors
from nova_multidest import vocabulary

LOG = logging.getLogger(__name__)

QEMU_NS = 'http://libvirt.org/schemas/domain/qemu/1.0'
MULTIDEST_NS = 'http://openstack.org/xmlns/libvirt/nova-multidest/1.0'
WORK_DIR_PREFIX = 'multidest-incoming-'
MiB = 1 << 20
# QEMU's events the election needs, as the data plane names them.
MONITOR_EVENTS = {'STOP': hypervisor.EVENT_STOPPED,
                  'RESUME': hypervisor.EVENT_RESUMED,
                  'MIGRATION': hypervisor.EVENT_MIGRATION,
                  'MIGRATION_PASS': hypervisor.EVENT_PASS}
SOURCE_FD_NAME = 'multidest-stream'


def _qmp(domain, command, **arguments):
    request = {'execute': command}
    if arguments:
        request['arguments'] = arguments
    try:
        reply = libvirt_qemu.qemuMonitorCommand(
            domain, json.dumps(request),
            libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_DEFAULT)
    except libvirt.libvirtError as exc:
        raise exceptions.QMPError(command=command, reason=str(exc))
    reply = json.loads(reply)
    if 'error' in reply:
        raise exceptions.QMPError(command=command,
                                  reason=reply['error'].get('desc'))
    return reply.get('return')


def _getfd(domain, name, fd):
    """Hand QEMU a file descriptor of this process under ``name``."""
    request = json.dumps({'execute': 'getfd',
                          'arguments': {'fdname': name}})
    try:
        reply = json.loads(libvirt_qemu.qemuMonitorCommandWithFiles(
            domain, request, [fd], 0)[0])
    except libvirt.libvirtError as exc:
        raise exceptions.QMPError(command='getfd', reason=str(exc))
    if 'error' in reply:
        raise exceptions.QMPError(command='getfd',
                                  reason=reply['error'].get('desc'))


def guest_disks(xml):
    """``[(target dev, disk element)]`` of the guest's disks, in order."""
    root = ElementTree.fromstring(xml)
    return [(disk.find('target').get('dev'), disk)
            for disk in root.findall('devices/disk')
            if disk.find('target') is not None]


def copied_disk(disk):
    """True if a block migration copies this disk element, as in Nova.

    Nova's libvirt driver copies every disk that is neither read-only nor
    shareable, of a local file or block device, unless it is a volume.
    """
    return (disk.find('readonly') is None and
            disk.find('shareable') is None and
            disk.get('device', 'disk') == 'disk')


def unmirrorable_reason(disk):
    """Why the disk element cannot be mirrored, or None if it can."""
    kinds = vocabulary.MirroredDisk
    if disk.get('type') not in kinds.SOURCE_TYPES:
        return ('its source is of type %s; only %s disks are copied'
                % (disk.get('type'), ' and '.join(kinds.SOURCE_TYPES)))
    driver = disk.find('driver')
    fmt = driver.get('type') if driver is not None else None
    if fmt not in kinds.FORMATS:
        return ('its format is %s; only %s disks are copied'
                % (fmt, ' and '.join(kinds.FORMATS)))
    if disk.find('encryption') is not None or (
            disk.find('source/encryption') is not None):
        return 'it is encrypted, and its key is not copied'
    return None


def _block_nodes(domain, xml):
    """``{target dev: (format node name, image info)}`` of the guest.

    libvirt names the devices (``alias``); QEMU's ``query-block`` names
    each device's node by the device's qdev path, which holds the alias.
    """
    aliases = {}
    for dev, disk in guest_disks(xml):
        alias = disk.find('alias')
        if alias is not None:
            aliases[alias.get('name')] = dev
    nodes = {}
    for device in _qmp(domain, 'query-block'):
        inserted = device.get('inserted')
        if not inserted:
            continue
        qdev = device.get('qdev') or device.get('device') or ''
        for alias, dev in aliases.items():
            parts = qdev.strip('/').split('/')
            if alias in parts or device.get('device') == 'drive-' + alias:
                nodes[dev] = (inserted.get('node-name'),
                              inserted.get('image') or {})
    return nodes


def _capabilities(capabilities):
    return [{'capability': name, 'state': bool(state)}
            for name, state in capabilities.items()]


def _register_namespaces():
    ElementTree.register_namespace('qemu', QEMU_NS)
    ElementTree.register_namespace('multidest', MULTIDEST_NS)


def incoming_xml(xml, work_dir, name=None):
    """The source's domain XML made into a paused incoming destination.

    The domain's metadata records ``work_dir`` (where QEMU listens for
    the stream) so that whoever destroys the domain, even after a restart
    of nova-compute, also removes it. ``name`` renames the domain and
    gives it a fresh UUID, for a source and destinations on one libvirtd
    (tests only: Nova needs the instance's own name and UUID on every
    host).
    """
    _register_namespaces()
    root = ElementTree.fromstring(xml)
    if name is not None:
        root.find('name').text = name
        uuid_element = root.find('uuid')
        if uuid_element is not None:
            uuid_element.text = str(uuid.uuid4())
    metadata = root.find('metadata')
    if metadata is None:
        metadata = ElementTree.SubElement(root, 'metadata')
    ElementTree.SubElement(metadata, '{%s}incoming' % MULTIDEST_NS,
                           dir=work_dir)
    commandline = root.find('{%s}commandline' % QEMU_NS)
    if commandline is None:
        commandline = ElementTree.SubElement(root,
                                             '{%s}commandline' % QEMU_NS)
    for value in ('-incoming', 'defer'):
        ElementTree.SubElement(commandline, '{%s}arg' % QEMU_NS,
                               value=value)
    return ElementTree.tostring(root, encoding='unicode')


def _incoming_args(commandline):
    args = commandline.findall('{%s}arg' % QEMU_NS)
    for first, second in zip(args, args[1:]):
        if (first.get('value'), second.get('value')) == ('-incoming',
                                                         'defer'):
            return first, second
    return None


def is_incoming_xml(xml):
    """True if the domain was created by ``incoming_xml``."""
    commandline = ElementTree.fromstring(xml).find(
        '{%s}commandline' % QEMU_NS)
    return commandline is not None and _incoming_args(commandline) is not None


def incoming_work_dir(xml):
    """The work directory ``incoming_xml`` recorded, if any."""
    marker = ElementTree.fromstring(xml).find(
        'metadata/{%s}incoming' % MULTIDEST_NS)
    if marker is None:
        return None
    work_dir = marker.get('dir') or ''
    # Never remove anything but a directory this module created.
    if not os.path.basename(work_dir).startswith(WORK_DIR_PREFIX):
        return None
    return work_dir


def persistent_xml(xml):
    """The elected domain's XML without what made it an incoming copy.

    Kept, ``-incoming defer`` would make every later start of the domain
    wait for a migration stream instead of booting.
    """
    _register_namespaces()
    root = ElementTree.fromstring(xml)
    metadata = root.find('metadata')
    if metadata is not None:
        for marker in metadata.findall('{%s}incoming' % MULTIDEST_NS):
            metadata.remove(marker)
    commandline = root.find('{%s}commandline' % QEMU_NS)
    if commandline is not None:
        pair = _incoming_args(commandline)
        if pair is not None:
            for arg in pair:
                commandline.remove(arg)
        if not len(commandline):
            root.remove(commandline)
    return ElementTree.tostring(root, encoding='unicode')


class _LibvirtGuest(hypervisor.Guest):
    """Behaviour of both ends; events come from libvirt's event loop.

    QEMU's own STOP, RESUME and MIGRATION events reach us through
    libvirt's QEMU monitor events, with QEMU's timestamps, and the domain
    going away through its lifecycle events: the election wakes on the
    event itself, never on a poll. libvirt delivers events only to a
    connection opened after an event loop was registered in the process,
    which nova-compute's Host does before it connects.
    """

    def __init__(self, domain):
        self.domain = domain
        self.name = domain.name()
        self._subscribers = hypervisor.Subscribers(self.name)
        self._lock = threading.Lock()
        self._registrations = None

    def subscribe(self, callback):
        self._subscribers.add(callback)
        if not self._watch():
            return
        if not self.is_alive():
            self._emit(hypervisor.GuestEvent(
                guest=self.name, kind=hypervisor.EVENT_EXITED,
                timestamp=time.time()))

    def _watch(self):
        """Register the event callbacks once; True the first time."""
        with self._lock:
            if self._registrations is not None:
                return False
            self._registrations = self._register()
        return True

    def _watch_jobs(self):
        self._watch()

    def _on_job_event(self, name, data):
        """Block job events; a source mirroring disks takes them."""

    def _register(self):
        connection = self.domain.connect()
        registrations = []
        what = None
        try:
            for name in tuple(MONITOR_EVENTS) + qmp_disks.JOB_END_EVENTS:
                what = 'QEMU monitor event %s' % name
                registrations.append((
                    libvirt_qemu.qemuMonitorEventDeregister,
                    libvirt_qemu.qemuMonitorEventRegister(
                        connection, self.domain, name,
                        self._on_monitor_event, None, 0)))
            what = 'lifecycle events'
            registrations.append((
                lambda conn, callback_id: conn.domainEventDeregisterAny(
                    callback_id),
                connection.domainEventRegisterAny(
                    self.domain, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                    self._on_lifecycle_event, None)))
        except libvirt.libvirtError as exc:
            self._deregister(connection, registrations)
            raise exceptions.HypervisorError(
                operation='watch the events of %s' % self.name,
                reason='libvirt refused the callback for its %s: %s'
                       % (what, exc))
        return connection, registrations

    @staticmethod
    def _deregister(connection, registrations):
        for deregister, callback_id in registrations:
            try:
                deregister(connection, callback_id)
            except libvirt.libvirtError as exc:
                LOG.debug('Event callback %s already gone: %s',
                          callback_id, exc)

    def _on_monitor_event(self, conn, dom, event, seconds, micros, details,
                          opaque):
        if event in qmp_disks.JOB_END_EVENTS:
            self._on_job_event(event, json.loads(details or '{}'))
            return
        kind = MONITOR_EVENTS.get(event)
        if kind is None:
            return
        data = json.loads(details or '{}')
        self._emit(hypervisor.GuestEvent(
            guest=self.name, kind=kind, timestamp=seconds + micros / 1e6,
            status=data.get('status') if kind == hypervisor.EVENT_MIGRATION
            else None, iteration=data.get('pass')))

    def _on_lifecycle_event(self, conn, dom, event, detail, opaque):
        if event in (libvirt.VIR_DOMAIN_EVENT_STOPPED,
                     libvirt.VIR_DOMAIN_EVENT_UNDEFINED):
            self._emit(hypervisor.GuestEvent(
                guest=self.name, kind=hypervisor.EVENT_EXITED,
                timestamp=time.time(), detail='libvirt lifecycle event %s'
                                              % event))

    def _emit(self, event):
        self._subscribers.emit(event)

    def stop_watching(self):
        """Drop the event callbacks; the guest is no longer ours to watch."""
        with self._lock:
            registrations, self._registrations = self._registrations, None
        if registrations is not None:
            self._deregister(*registrations)

    def is_alive(self):
        try:
            return bool(self.domain.isActive())
        except libvirt.libvirtError:
            return False

    def is_running(self):
        try:
            state, _reason = self.domain.state()
        except libvirt.libvirtError:
            return False
        return state == libvirt.VIR_DOMAIN_RUNNING

    def run_state(self):
        return _qmp(self.domain, 'query-status')['status']

    def memory_digest(self, scratch_dir=None):
        """SHA-256 of guest RAM, saved by QEMU into a scratch file."""
        memory = self.domain.info()[1] * 1024
        directory = tempfile.mkdtemp(prefix='multidest-ram-',
                                     dir=scratch_dir)
        path = os.path.join(directory, 'memory.bin')
        try:
            _qmp(self.domain, 'pmemsave', val=0, size=memory, filename=path)
            digest = hashlib.sha256()
            with open(path, 'rb') as f:
                for block in iter(lambda: f.read(4 * MiB), b''):
                    digest.update(block)
            return digest.hexdigest()
        finally:
            shutil.rmtree(directory, ignore_errors=True)


class LibvirtSource(qmp_disks.MirroringSource, _LibvirtGuest,
                    hypervisor.SourceGuest):

    def __init__(self, domain):
        super().__init__(domain)
        self._stream_socket = None

    def set_capabilities(self, capabilities):
        _qmp(self.domain, 'migrate-set-capabilities',
             capabilities=_capabilities(capabilities))

    def set_parameters(self, max_bandwidth=None, downtime_limit_ms=None,
                       multifd_channels=None):
        parameters = hypervisor.qmp_parameters(
            max_bandwidth, downtime_limit_ms, multifd_channels)
        if parameters:
            _qmp(self.domain, 'migrate-set-parameters', **parameters)

    def migrate(self, uri):
        if not uri.startswith('unix:'):
            _qmp(self.domain, 'migrate', uri=uri)
            return
        # QEMU runs as another user than nova-compute: instead of opening
        # the relay's socket to it, connect here and hand QEMU the socket.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(uri[len('unix:'):])
            request = json.dumps({'execute': 'getfd',
                                  'arguments': {'fdname': SOURCE_FD_NAME}})
            libvirt_qemu.qemuMonitorCommandWithFiles(
                self.domain, request, [sock.fileno()], 0)
            _qmp(self.domain, 'migrate', uri='fd:%s' % SOURCE_FD_NAME)
        except libvirt.libvirtError as exc:
            sock.close()
            raise exceptions.QMPError(command='getfd', reason=str(exc))
        except Exception:
            sock.close()
            raise
        # QEMU holds its own duplicate of the socket now.
        sock.close()

    def stats(self):
        return hypervisor.MigrationStats.from_query_migrate(
            _qmp(self.domain, 'query-migrate'))

    def continue_migration(self):
        _qmp(self.domain, 'migrate-continue',
             state=vocabulary.QemuStatus.PRE_SWITCHOVER)

    def local_disks(self, devices=None):
        """The disks a block migration copies, by target device.

        ``devices`` (Nova's choice, which leaves volumes out) narrows the
        list; a disk that must be copied but cannot be mirrored raises
        DiskNotMirrorable naming it, before anything is started.
        """
        xml = self.domain.XMLDesc(0)
        disks = dict(guest_disks(xml))
        if devices is None:
            devices = [dev for dev, disk in disks.items()
                       if copied_disk(disk)]
        nodes = _block_nodes(self.domain, xml)
        result = []
        for dev in devices:
            disk = disks.get(dev)
            if disk is None:
                raise exceptions.DiskNotMirrorable(
                    disk=dev, reason='the guest %s has no such disk'
                                     % self.name)
            reason = unmirrorable_reason(disk)
            if reason is None and dev not in nodes:
                reason = 'QEMU reports no block node for it'
            if reason is not None:
                raise exceptions.DiskNotMirrorable(disk=dev, reason=reason)
            image = nodes[dev][1]
            result.append(hypervisor.LocalDisk(
                name=dev, size=int(image.get('virtual-size', 0)),
                shallow=bool(image.get('backing-filename'))))
        return result

    def _mirror_commands(self):
        return (functools.partial(_qmp, self.domain),
                functools.partial(_getfd, self.domain))

    def _disk_nodes(self, disks):
        nodes = _block_nodes(self.domain, self.domain.XMLDesc(0))
        return {disk.name: nodes[disk.name][0] for disk in disks}

    def cancel(self):
        try:
            _qmp(self.domain, 'migrate_cancel')
        except exceptions.QMPError as exc:
            LOG.warning('migrate_cancel on %s: %s', self.name, exc)

    def resume(self):
        if not self.is_alive():
            return
        if (self.run_state() in
                vocabulary.QemuRunState.PAUSED_AFTER_MIGRATION):
            self.domain.resume()


class LibvirtDestination(_LibvirtGuest, hypervisor.DestinationGuest):

    def __init__(self, domain, work_dir):
        super().__init__(domain)
        self.work_dir = work_dir
        self._agent = None

    def open_stream(self, secret, listen=('127.0.0.1', 0), tls=None,
                    forward_tls=None):
        """Start the stream agent, with TLS on hops between hosts."""
        agent = relay.DestinationAgent(
            secret, target=self.incoming_target, listen=listen, tls=tls,
            forward_tls=forward_tls, name=self.name)
        agent.start()
        self._agent = agent
        return agent.address

    def stream_bytes_received(self):
        return self._agent.bytes_received if self._agent is not None else 0

    def close_stream(self):
        if self._agent is not None:
            self._agent.close()
        self.close_disk_stream()

    @property
    def _exports(self):
        if getattr(self, '_disk_exports', None) is None:
            self._disk_exports = qmp_disks.Exports(
                functools.partial(_qmp, self.domain),
                functools.partial(_getfd, self.domain), self.work_dir)
        return self._disk_exports

    def export_disks(self, disks):
        nodes = _block_nodes(self.domain, self.domain.XMLDesc(0))
        missing = [disk.name for disk in disks if disk.name not in nodes]
        if missing:
            raise exceptions.HypervisorError(
                operation='export disks of %s' % self.name,
                reason='the domain has no disk %s' % ', '.join(missing))
        return self._exports.start(
            {disk.name: nodes[disk.name][0] for disk in disks})

    @property
    def incoming_target(self):
        return 'unix:%s' % os.path.join(self.work_dir, 'incoming.sock')

    def start_incoming(self, capabilities=None, multifd_channels=0):
        caps = {'events': True, 'late-block-activate': True}
        caps.update(capabilities or {})
        _qmp(self.domain, 'migrate-set-capabilities',
             capabilities=_capabilities(caps))
        if multifd_channels:
            _qmp(self.domain, 'migrate-set-parameters',
                 **hypervisor.qmp_parameters(
                     multifd_channels=multifd_channels))
        _qmp(self.domain, 'migrate-incoming', uri=self.incoming_target)

    def migration_status(self):
        if not self.is_alive():
            return vocabulary.QemuStatus.FAILED
        try:
            return _qmp(self.domain, 'query-migrate').get(
                'status', vocabulary.QemuStatus.NONE)
        except exceptions.QMPError:
            return vocabulary.QemuStatus.FAILED

    def resume(self):
        status = self.migration_status()
        if status != vocabulary.QemuStatus.COMPLETED:
            raise exceptions.HypervisorError(
                operation='resume %s' % self.name,
                reason='its incoming migration is %s, not completed'
                       % status)
        self.check_disks_copied()
        try:
            if self.copies_disks:
                # The guest may write its disks only once nobody else can.
                self._exports.stop()
            self.domain.resume()
            _qmp(self.domain, 'announce-self', **hypervisor.ANNOUNCE_SELF)
            self.domain.connect().defineXML(persistent_xml(
                self.domain.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)))
        except (libvirt.libvirtError, exceptions.QMPError) as exc:
            raise exceptions.HypervisorError(
                operation='resume %s' % self.name, reason=str(exc))
        # The guest is an ordinary Nova guest from now on.
        self.stop_watching()
        self.close_stream()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def destroy(self):
        self.stop_watching()
        self.close_stream()
        _destroy_domain(self.domain)
        shutil.rmtree(self.work_dir, ignore_errors=True)


def _destroy_domain(domain):
    try:
        domain.destroy()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN,
                                        libvirt.VIR_ERR_OPERATION_INVALID):
            raise
    try:
        domain.undefine()
    except libvirt.libvirtError as exc:
        # A transient domain is gone once destroyed.
        if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN,
                                        libvirt.VIR_ERR_OPERATION_INVALID):
            raise


def _qemu_owner(domain):
    """uid and gid QEMU runs as, from the DAC security label."""
    try:
        labels = domain.securityLabelList()
    except libvirt.libvirtError:
        return None
    for label, _enforcing in labels:
        if label.startswith('+') and ':+' in label:
            uid, gid = label[1:].split(':+', 1)
            return int(uid), int(gid)
    return None


class LibvirtHypervisor(hypervisors.NovaHypervisor):
    """Guests of one libvirt connection."""

    def __init__(self, connect, rename_destinations=False, work_dir=None):
        super().__init__(connect)
        self.rename_destinations = rename_destinations
        self.work_dir = work_dir

    def _lookup(self, name):
        try:
            return self.connection.lookupByName(name)
        except libvirt.libvirtError as exc:
            raise exceptions.HypervisorError(
                operation='lookup of domain %s' % name, reason=str(exc))

    def source(self, guest):
        return LibvirtSource(self._lookup(guest))

    def source_xml(self, domain_name):
        return self._lookup(domain_name).XMLDesc(
            libvirt.VIR_DOMAIN_XML_MIGRATABLE)

    def destination_from_xml(self, name, xml):
        new_name = None
        if self.rename_destinations:
            new_name = '%s-%s' % (ElementTree.fromstring(xml).findtext('name'),
                                  name)
        work_dir = tempfile.mkdtemp(prefix=WORK_DIR_PREFIX,
                                    dir=self.work_dir)
        try:
            domain = self.connection.createXML(
                incoming_xml(xml, work_dir, new_name),
                libvirt.VIR_DOMAIN_START_PAUSED)
        except libvirt.libvirtError as exc:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise exceptions.HypervisorError(
                operation='create destination %s' % name, reason=str(exc))
        owner = _qemu_owner(domain)
        if owner is not None:
            # QEMU creates its listening socket in there.
            os.chown(work_dir, *owner)
        LOG.info('Destination domain %s started paused in incoming mode',
                 domain.name())
        return LibvirtDestination(domain, work_dir)

    def destroy_incoming(self, domain_name):
        try:
            domain = self.connection.lookupByName(domain_name)
        except libvirt.libvirtError:
            return False
        state, _reason = domain.state()
        xml = domain.XMLDesc(0)
        if state != libvirt.VIR_DOMAIN_PAUSED or not is_incoming_xml(xml):
            return False
        _destroy_domain(domain)
        work_dir = incoming_work_dir(xml)
        if work_dir is not None:
            shutil.rmtree(work_dir, ignore_errors=True)
        return True
