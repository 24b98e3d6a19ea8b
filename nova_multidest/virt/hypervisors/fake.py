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

"""A hypervisor extension that only pretends to migrate.

Nova-level tests (``[multidest] hypervisor = fake``) run many computes in
one process over Nova's fake libvirt, where no guest memory exists. This
extension simulates the stream (bytes over time, in a fraction of a
second), lets a test make one destination host fail in one phase, and
keeps domains on the host's fake libvirt connection in step, so that a
test can see which copies exist, which run and which were left behind.
Local disks are the files the domain XML names: a block migration copies
the source's files into the destinations' (which Nova's pre-live-migration
made), and only reads the source's.

Everything it shares between computes lives in one module-level registry,
because every compute of a functional test runs in this process:

    fake.inject_fault('host2', vocabulary.DestinationPhase.STREAM)
    self.addCleanup(fake.reset)
"""

import collections
import itertools
import os
import threading
import time
from xml.etree import ElementTree

from oslo_log import log as logging

from nova_multidest.dataplane import disk_copy
from nova_multidest.dataplane import hypervisor
from nova_multidest.dataplane import relay
from nova_multidest.dataplane import source_stream
from nova_multidest import exceptions
from nova_multidest.virt import hypervisors
from nova_multidest import vocabulary

LOG = logging.getLogger(__name__)

# The phases of a destination a fault can be injected at, and what fails.
FAULTS = {
    vocabulary.DestinationPhase.PREPARE:
        'start_incoming fails after the domain exists',
    vocabulary.DestinationPhase.STREAM:
        'the destination dies half-way through the stream (through the '
        'disk copy first, when local disks are copied)',
    vocabulary.DestinationPhase.COMPLETE:
        'the last bytes arrive but loading them fails',
    vocabulary.DestinationPhase.RESUME: 'the elected copy cannot run',
}
PHASES = tuple(FAULTS)
# Faults of the source host: every destination fails with it.
PHASE_SOURCE_START = 'source_start'    # the outgoing migration cannot start
PHASE_SOURCE_STREAM = 'source_stream'  # it fails half-way through
SOURCE_PHASES = (PHASE_SOURCE_START, PHASE_SOURCE_STREAM)

# libvirt's values; this module must not import libvirt, which Nova's
# functional harness replaces.
_LIST_ACTIVE = 1
_LIST_INACTIVE = 2
_STATE_RUNNING = 1
_STATE_PAUSED = 3
_START_PAUSED = 1

DEFAULT_STEPS = 10
DEFAULT_STEP_SECONDS = 0.02
DEFAULT_MEMORY = 64 << 20


class _Registry(object):

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.faults = {}
        self.agents = {}
        self.relays = {}
        self.steps = DEFAULT_STEPS
        self.step_seconds = DEFAULT_STEP_SECONDS
        self.ports = itertools.count(40000)
        self.relay_ids = itertools.count(1)
        self.applied = collections.defaultdict(list)


_REGISTRY = _Registry()
_DOMAIN_LOCK = threading.Lock()


def inject_fault(host, phase, message=None):
    """Make every later destination (or source) on ``host`` fail.

    ``phase`` is one of PHASES (see FAULTS) or SOURCE_PHASES.
    """
    if phase not in PHASES + SOURCE_PHASES:
        raise ValueError('phase must be one of %s' % ', '.join(
            PHASES + SOURCE_PHASES))
    with _REGISTRY.lock:
        _REGISTRY.faults[(host, phase)] = (
            message or 'injected %s fault on %s' % (phase, host))


def _apply(host, what, value):
    with _REGISTRY.lock:
        _REGISTRY.applied[host].append((what, value))


def applied(host):
    """What the hypervisor of ``host`` was told, in order.

    ``(what, value)`` pairs: ``capabilities`` and ``parameters`` of a
    source, ``cancel``, ``incoming`` (capabilities, multifd channels) and
    ``tls`` of a destination, ``relay_tls`` of a source's relay.
    """
    with _REGISTRY.lock:
        return list(_REGISTRY.applied[host])


def clear_faults():
    with _REGISTRY.lock:
        _REGISTRY.faults.clear()


def configure(steps=None, step_seconds=None):
    """Change how long a simulated pass takes (steps x step_seconds)."""
    with _REGISTRY.lock:
        if steps is not None:
            _REGISTRY.steps = steps
        if step_seconds is not None:
            _REGISTRY.step_seconds = step_seconds


def reset():
    """Forget faults and settings; close relays a test left running."""
    with _REGISTRY.lock:
        relays = list(_REGISTRY.relays.values())
    for fake_relay in relays:
        fake_relay.close()
    with _REGISTRY.lock:
        _REGISTRY.reset()


def open_streams():
    """Relays and incoming streams still open, for leak checks."""
    with _REGISTRY.lock:
        return sorted(_REGISTRY.relays) + sorted(
            '%s:%s' % address for address in _REGISTRY.agents)


def guests_settled():
    """Hold while sampling which copies run.

    A destination domain is created and paused under this lock, so that
    a test never sees it in between, where Nova's fake libvirt shows it
    running.
    """
    return _DOMAIN_LOCK


def _fault(host, phase):
    with _REGISTRY.lock:
        return _REGISTRY.faults.get((host, phase))


def _find_domain(conn, name):
    if conn is None:
        return None
    for domain in conn.listAllDomains(_LIST_ACTIVE | _LIST_INACTIVE):
        if domain.name() == name:
            return domain
    return None


def _memory_bytes(xml):
    try:
        element = ElementTree.fromstring(xml).find('memory')
    except ElementTree.ParseError:
        return DEFAULT_MEMORY
    if element is None or not (element.text or '').strip():
        return DEFAULT_MEMORY
    scale = {'kib': 1 << 10, 'k': 1 << 10, 'mib': 1 << 20, 'm': 1 << 20,
             'gib': 1 << 30, 'g': 1 << 30, 'b': 1, 'bytes': 1}
    unit = element.get('unit', 'KiB').lower()
    return int(element.text) * scale.get(unit, 1 << 10)


def disk_files(xml):
    """``{target dev: file}`` of the disks a block migration copies.

    As Nova's libvirt driver chooses them: file disks, neither read-only
    nor shareable.
    """
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return {}
    files = {}
    for disk in root.findall('devices/disk'):
        target = disk.find('target')
        source = disk.find('source')
        if (target is None or source is None or
                disk.get('type') != 'file' or
                disk.get('device', 'disk') != 'disk' or
                disk.find('readonly') is not None or
                disk.find('shareable') is not None):
            continue
        files[target.get('dev')] = source.get('file')
    return files


def _register_agent(agent, listen):
    """Listen at ``listen`` (any port if 0); OSError if it is taken."""
    with _REGISTRY.lock:
        port = listen[1] or next(_REGISTRY.ports)
        address = (listen[0], port)
        if address in _REGISTRY.agents:
            raise OSError('address %s:%s in use' % address)
        _REGISTRY.agents[address] = agent
    return address


def _unregister_agent(agent, address):
    with _REGISTRY.lock:
        if _REGISTRY.agents.get(address) is agent:
            del _REGISTRY.agents[address]


def _domain_name(xml, default):
    try:
        name = ElementTree.fromstring(xml).findtext('name')
    except ElementTree.ParseError:
        return default
    return name or default


class _FakeGuest(hypervisor.Guest):

    def __init__(self, name, domain):
        self.name = name
        self.domain = domain
        self._subscribers = hypervisor.Subscribers(name)

    def subscribe(self, callback):
        self._subscribers.add(callback)

    def _emit(self, kind, status=None, detail=None, iteration=None):
        event = hypervisor.GuestEvent(guest=self.name, kind=kind,
                                      timestamp=time.time(), status=status,
                                      detail=detail, iteration=iteration)
        self._subscribers.emit(event)

    def _domain_state(self):
        if self.domain is None:
            return None
        try:
            return self.domain.info()[0]
        except Exception:
            return None

    def is_alive(self):
        return self.domain is None or self._domain_state() is not None


class FakeSource(_FakeGuest, hypervisor.SourceGuest):

    def __init__(self, name, domain, memory_bytes, host=None):
        super().__init__(name, domain)
        self.host = host
        self.status = vocabulary.QemuStatus.NONE
        self.total = memory_bytes
        self.transferred = 0
        self.remaining = memory_bytes
        self.iterations = 0
        self.capabilities = {}
        self.max_bandwidth = None
        self.downtime_limit_ms = None
        self.multifd_channels = None
        self.cancelled = False
        self.error = None
        self._paused = False
        self._continued = threading.Event()

    def set_capabilities(self, capabilities):
        _apply(self.host, 'capabilities', dict(capabilities))
        self.capabilities.update(capabilities)

    def set_parameters(self, max_bandwidth=None, downtime_limit_ms=None,
                       multifd_channels=None):
        _apply(self.host, 'parameters', {
            key: value for key, value in (
                ('max_bandwidth', max_bandwidth),
                ('downtime_limit_ms', downtime_limit_ms),
                ('multifd_channels', multifd_channels))
            if value is not None})
        if multifd_channels is not None:
            self.multifd_channels = multifd_channels
        if max_bandwidth is not None:
            self.max_bandwidth = max_bandwidth
        if downtime_limit_ms is not None:
            self.downtime_limit_ms = downtime_limit_ms

    @property
    def holding(self):
        return (self.downtime_limit_ms is not None and
                self.downtime_limit_ms <= source_stream.HOLD_DOWNTIME_MS)

    def migrate(self, uri):
        with _REGISTRY.lock:
            fake_relay = _REGISTRY.relays.get(uri)
        if fake_relay is None:
            raise exceptions.HypervisorError(
                operation='migrate %s' % self.name,
                reason='nothing listens on %s' % uri)
        message = _fault(self.host, PHASE_SOURCE_START)
        if message:
            raise exceptions.HypervisorError(
                operation='migrate %s' % self.name, reason=message)
        self.status = vocabulary.QemuStatus.ACTIVE
        self._emit(hypervisor.EVENT_MIGRATION, status=self.status)
        fake_relay.feed(self)

    def stats(self):
        return hypervisor.MigrationStats(
            status=self.status, transferred=self.transferred,
            remaining=self.remaining, total=self.total,
            iterations=self.iterations, error=self.error)

    def cancel(self):
        _apply(self.host, 'cancel', True)
        self.cancelled = True
        self._continued.set()

    def continue_migration(self):
        self._continued.set()

    def wait_continued(self, timeout):
        """True once told to go on from pre-switchover (or cancelled)."""
        return self._continued.wait(timeout)

    def local_disks(self, devices=None):
        files = self._guest_disk_files()
        if devices is None:
            devices = list(files)
        result = []
        for dev in devices:
            path = files.get(dev)
            if path is None or not os.path.isfile(path):
                raise exceptions.DiskNotMirrorable(
                    disk=dev, reason='the guest %s has no disk file for it'
                                     % self.name)
            result.append(hypervisor.LocalDisk(
                name=dev, size=os.path.getsize(path), shallow=False))
        return result

    def disk_file(self, name):
        """The file of disk ``name`` on this host."""
        return self._guest_disk_files()[name]

    def _guest_disk_files(self):
        if self.domain is None:
            return {}
        return disk_files(self.domain.XMLDesc(0))

    def pause(self):
        self._paused = True
        if self.domain is not None:
            self.domain.suspend()
        self._emit(hypervisor.EVENT_STOPPED)

    def resume(self):
        if self.domain is not None:
            if self._domain_state() == _STATE_PAUSED:
                self.domain.resume()
        self._paused = False
        self._emit(hypervisor.EVENT_RESUMED)

    def finish(self, status, error=None):
        self.status = status
        self.error = error
        if status != vocabulary.QemuStatus.COMPLETED and self._paused:
            self.resume()
        self._emit(hypervisor.EVENT_MIGRATION, status=status, detail=error)

    def is_running(self):
        if self.domain is None:
            return not self._paused
        return self._domain_state() == _STATE_RUNNING


class FakeDestination(_FakeGuest, hypervisor.DestinationGuest):

    def __init__(self, name, domain, memory_bytes):
        super().__init__(name, domain)
        self.total = memory_bytes
        self.received = 0
        self.status = vocabulary.QemuStatus.NONE
        self.reason = None
        self.address = None
        self.secret = None
        self.resumed = False
        self.destroyed = False
        self.capabilities = {}
        self.multifd_channels = 0
        self._disk_agent = None

    @property
    def incoming_target(self):
        return 'fake:%s' % self.name

    def start_incoming(self, capabilities=None, multifd_channels=0):
        self.capabilities = dict(capabilities or {})
        self.multifd_channels = multifd_channels
        _apply(self.name, 'incoming', (self.capabilities, multifd_channels))
        message = _fault(self.name, vocabulary.DestinationPhase.PREPARE)
        if message:
            raise exceptions.HypervisorError(
                operation='start_incoming on %s' % self.name, reason=message)
        self.status = vocabulary.QemuStatus.SETUP

    def open_stream(self, secret, listen=('127.0.0.1', 0), tls=None,
                    forward_tls=None):
        self.secret = secret
        address = _register_agent(self, listen)
        _apply(self.name, 'tls', tls is not None)
        self.address = address
        return address

    def stream_bytes_received(self):
        return self.received

    def close_stream(self):
        _unregister_agent(self, self.address)
        self.close_disk_stream()

    def export_disks(self, disks):
        """This copy's disk files, which must exist at their full size."""
        files = (disk_files(self.domain.XMLDesc(0))
                 if self.domain is not None else {})
        exports = {}
        for disk in disks:
            path = files.get(disk.name)
            if path is None or not os.path.isfile(path):
                raise exceptions.HypervisorError(
                    operation='export disks of %s' % self.name,
                    reason='disk %s has no file here (%s); pre-live-migration'
                           ' makes it' % (disk.name, path))
            if os.path.getsize(path) < disk.size:
                raise exceptions.HypervisorError(
                    operation='export disks of %s' % self.name,
                    reason='disk %s is smaller here than on the source'
                           % disk.name)
            exports[disk.name] = (path, disk.name)
        return exports

    def open_disk_stream(self, secret, exports, listen=('127.0.0.1', 0),
                         tls=None, forward_tls=None):
        agent = _FakeDiskAgent(self, secret, exports)
        agent.address = _register_agent(agent, listen)
        self._disk_agent = agent
        return agent.address

    def disks_copied(self):
        if self._disk_agent is None:
            return None
        return self._disk_agent.copied

    @property
    def copies_disks(self):
        return self._disk_agent is not None

    def disk_copy_reason(self):
        return self._disk_agent.reason if self._disk_agent else None

    def close_disk_stream(self):
        if self._disk_agent is not None:
            _unregister_agent(self._disk_agent, self._disk_agent.address)

    def receive(self, size):
        """Take ``size`` bytes; False once this destination failed."""
        if self.status in vocabulary.QemuStatus.FINAL:
            return self.status != vocabulary.QemuStatus.FAILED
        if self.destroyed:
            self.fail('destination destroyed')
            return False
        self.received += size
        if self.status != vocabulary.QemuStatus.ACTIVE:
            self.status = vocabulary.QemuStatus.ACTIVE
            self._emit(hypervisor.EVENT_MIGRATION, status=self.status)
        message = _fault(self.name, vocabulary.DestinationPhase.STREAM)
        if message and self.received * 2 >= self.total:
            self.fail(message)
            return False
        return True

    def finish(self):
        message = _fault(self.name, vocabulary.DestinationPhase.COMPLETE)
        if message:
            self.fail(message)
            return False
        self.status = vocabulary.QemuStatus.COMPLETED
        self._emit(hypervisor.EVENT_MIGRATION, status=self.status)
        return True

    def fail(self, reason):
        if self._disk_agent is not None and self._disk_agent.copied is None:
            self._disk_agent.fail(reason)
        if self.status in vocabulary.QemuStatus.FINAL:
            return
        self.status = vocabulary.QemuStatus.FAILED
        self.reason = reason
        LOG.info('Fake destination %s failed: %s', self.name, reason)
        self._emit(hypervisor.EVENT_MIGRATION, status=self.status,
                   detail=reason)

    def migration_status(self):
        return self.status

    def resume(self):
        if self.status != vocabulary.QemuStatus.COMPLETED:
            raise exceptions.HypervisorError(
                operation='resume %s' % self.name,
                reason='the incoming stream is %s' % self.status)
        self.check_disks_copied()
        message = _fault(self.name, vocabulary.DestinationPhase.RESUME)
        if message:
            raise exceptions.HypervisorError(
                operation='resume %s' % self.name, reason=message)
        if self.domain is not None:
            self.domain.resume()
        self.resumed = True
        self._emit(hypervisor.EVENT_RESUMED)

    def destroy(self):
        self.close_stream()
        self.fail('destroyed')
        self.destroyed = True
        _destroy_domain(self.domain)

    def is_running(self):
        if self.domain is None:
            return self.resumed and not self.destroyed
        return self._domain_state() == _STATE_RUNNING


def _destroy_domain(domain):
    if domain is None:
        return
    try:
        domain.destroy()
    except Exception as exc:
        LOG.debug('Fake domain destroy: %s', exc)
    try:
        domain.undefine()
    except Exception as exc:
        # Transient domains vanish with destroy.
        LOG.debug('Fake domain undefine: %s', exc)


class FakeRelay(object):
    """Moves simulated bytes from a FakeSource to FakeDestinations."""

    def __init__(self, secret, destinations, topology='star', lag_limit=None,
                 on_drop=None, listen=None, **kwargs):
        self.secret = secret
        self.listen = listen
        self.names = [name for name, _ in destinations]
        self.addresses = {name: tuple(address)
                          for name, address in destinations}
        self.topology = topology
        self.on_drop = on_drop
        self.source_uri = None
        self._targets = {}
        self._state = dict.fromkeys(self.names,
                                    vocabulary.StreamState.CONNECTING)
        self._reasons = {}
        self._sent = dict.fromkeys(self.names, 0)
        self._from_source = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        with _REGISTRY.lock:
            for name in self.names:
                target = _REGISTRY.agents.get(self.addresses[name])
                if target is None or target.secret != self.secret:
                    self._state[name] = vocabulary.StreamState.FAILED
                    self._reasons[name] = 'no agent with this secret at %s' % (
                        self.addresses[name],)
                else:
                    self._targets[name] = target
                    self._state[name] = vocabulary.StreamState.STREAMING
            if not self._targets:
                raise exceptions.AllDestinationsFailed(
                    reasons='; '.join('%s: %s' % item
                                      for item in self._reasons.items()))
            self.source_uri = 'fake:relay-%d' % next(_REGISTRY.relay_ids)
            _REGISTRY.relays[self.source_uri] = self

    def feed(self, source):
        self._thread = threading.Thread(target=self._transfer,
                                        args=(source,), daemon=True,
                                        name='fake-relay-%s' % source.name)
        self._thread.start()

    def live_destinations(self):
        with self._lock:
            return [name for name in self.names
                    if self._state[name] != vocabulary.StreamState.FAILED]

    def prioritize_leader(self):
        """Simulated bytes share no link: nobody goes first."""
        return None

    @property
    def bytes_from_source(self):
        with self._lock:
            return self._from_source

    def _live_targets(self):
        live = self.live_destinations()
        return [(name, self._targets[name]) for name in live
                if name in self._targets]

    def _mark_failed(self, name, reason, notify=True):
        with self._lock:
            if self._state[name] == vocabulary.StreamState.FAILED:
                return
            self._state[name] = vocabulary.StreamState.FAILED
            self._reasons[name] = reason
        target = self._targets.get(name)
        if target is not None:
            target.fail(reason)
        if notify and self.on_drop is not None:
            self.on_drop(name, reason)

    def _send(self, size):
        with self._lock:
            self._from_source += size
        for name, target in self._live_targets():
            if target.receive(size):
                with self._lock:
                    self._sent[name] += size
            else:
                self._mark_failed(name, target.reason or 'destination failed')

    def _transfer(self, source):
        with _REGISTRY.lock:
            steps = max(_REGISTRY.steps, 1)
            step_seconds = _REGISTRY.step_seconds
        chunk = max(source.total // steps, 1)
        source.iterations = 1
        while not self._stop.is_set():
            if source.cancelled:
                for name, _ in self._live_targets():
                    self._mark_failed(name, 'migration cancelled', False)
                source.finish(vocabulary.QemuStatus.CANCELLED)
                return
            if not self.live_destinations():
                source.finish(vocabulary.QemuStatus.FAILED,
                              'every destination failed')
                return
            message = _fault(source.host, PHASE_SOURCE_STREAM)
            if message and source.transferred * 2 >= source.total:
                for name, _ in self._live_targets():
                    self._mark_failed(name, 'source failed: %s' % message,
                                      False)
                source.finish(vocabulary.QemuStatus.FAILED, message)
                return
            if source.transferred < source.total:
                size = min(chunk, source.total - source.transferred)
                source.remaining = source.total - source.transferred - size
            elif source.holding:
                source.iterations += 1
                source._emit(hypervisor.EVENT_PASS,
                             iteration=source.iterations)
                size = max(chunk // 4, 1)
                source.remaining = size
            else:
                self._complete(source)
                return
            source.transferred += size
            self._send(size)
            self._stop.wait(step_seconds)
        if source.status not in vocabulary.QemuStatus.FINAL:
            source.finish(vocabulary.QemuStatus.FAILED, 'relay closed')

    def _complete(self, source):
        source.pause()
        if source.capabilities.get('pause-before-switchover'):
            # QEMU waits here until the disk mirrors ended.
            source.status = vocabulary.QemuStatus.PRE_SWITCHOVER
            source._emit(hypervisor.EVENT_MIGRATION, status=source.status)
            while not source.wait_continued(0.05):
                if self._stop.is_set():
                    source.finish(vocabulary.QemuStatus.FAILED,
                                  'relay closed')
                    return
            if source.cancelled:
                for name, _ in self._live_targets():
                    self._mark_failed(name, 'migration cancelled', False)
                source.finish(vocabulary.QemuStatus.CANCELLED)
                return
            source.status = vocabulary.QemuStatus.ACTIVE
        self._send(source.remaining)
        source.remaining = 0
        completed = 0
        for name, target in self._live_targets():
            if target.finish():
                completed += 1
                with self._lock:
                    self._state[name] = vocabulary.StreamState.COMPLETE
            else:
                self._mark_failed(name, target.reason)
        if completed:
            source.finish(vocabulary.QemuStatus.COMPLETED)
        else:
            source.finish(vocabulary.QemuStatus.FAILED,
                          'no destination loaded the state')

    def progress(self):
        with self._lock:
            return {name: relay.DestinationProgress(
                self._state[name], self._sent[name], self._reasons.get(name))
                for name in self.names}

    def drop(self, name, reason):
        self._mark_failed(name, 'dropped: %s' % reason)

    def wait_finished(self, timeout=None):
        if self._thread is not None:
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

    def close(self):
        self._stop.set()
        if (self._thread is not None and
                self._thread is not threading.current_thread()):
            self._thread.join(5)
        for name, _ in self._live_targets():
            with self._lock:
                finished = self._state[name] == vocabulary.StreamState.COMPLETE
            if not finished:
                self._mark_failed(name, 'relay closed', False)
        with _REGISTRY.lock:
            if _REGISTRY.relays.get(self.source_uri) is self:
                del _REGISTRY.relays[self.source_uri]


class _FakeDiskAgent(object):
    """A destination's disk writer: writes into the files it exports."""

    def __init__(self, destination, secret, exports):
        self.destination = destination
        self.secret = secret
        self.exports = dict(exports)
        self.address = None
        self.copied = None
        self.reason = None

    def write(self, disk, offset, data):
        with open(self.exports[disk][0], 'r+b') as f:
            f.seek(offset)
            f.write(data)

    def complete(self):
        if self.copied is None:
            self.copied = True
            self.destination._emit(hypervisor.EVENT_MIGRATION,
                                   status=self.destination.status)

    def fail(self, reason):
        if self.copied is None:
            self.copied = False
            self.reason = reason
            self.destination.fail(reason)


class FakeDiskCopy(object):
    """``disk_copy.DiskCopy`` over files: the source's, read only.

    Copies every disk file of ``source`` into each live destination's,
    in steps as the memory stream goes; a destination with a STREAM fault
    dies half-way through. Once every destination has the whole of every
    disk the mirrors are "in sync": the fake guest never writes, so they
    stay so until the switch-over.
    """

    def __init__(self, source, disks, destinations, secret, on_drop=None,
                 **kwargs):
        self.source = source
        self.disks = list(disks)
        if not self.disks:
            raise exceptions.InvalidSettings(
                reason='a disk copy needs at least one disk')
        self.secret = secret
        self.on_drop = on_drop
        self.names = [name for name, _ in destinations]
        self.addresses = {name: tuple(address)
                          for name, address in destinations}
        self.total = sum(disk.size for disk in self.disks)
        self._agents = {}
        self._failed = {}
        self._processed = dict.fromkeys(self.names, 0)
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        with _REGISTRY.lock:
            for name in self.names:
                agent = _REGISTRY.agents.get(self.addresses[name])
                if (not isinstance(agent, _FakeDiskAgent) or
                        agent.secret != self.secret):
                    self._failed[name] = (
                        'no disk agent with this secret at %s'
                        % (self.addresses[name],))
                else:
                    self._agents[name] = agent
            steps = max(_REGISTRY.steps, 1)
            step_seconds = _REGISTRY.step_seconds
        if not self._agents:
            raise exceptions.AllDestinationsFailed(
                reasons='; '.join('%s: %s' % item
                                  for item in self._failed.items()))
        self._thread = threading.Thread(
            target=self._copy, args=(max(self.total // steps, 1),
                                     step_seconds),
            daemon=True, name='fake-disk-copy-%s' % self.source.name)
        self._thread.start()

    def _live_agents(self):
        with self._lock:
            return [(name, agent) for name, agent in self._agents.items()
                    if name not in self._failed]

    def _mark_failed(self, name, reason, notify=True):
        with self._lock:
            if name in self._failed:
                return
            self._failed[name] = reason
            agent = self._agents.get(name)
        if agent is not None:
            agent.fail(reason)
        if notify and self.on_drop is not None:
            self.on_drop(name, reason)

    def _copy(self, chunk, step_seconds):
        try:
            for disk in self.disks:
                if not self._copy_disk(disk, chunk, step_seconds):
                    return
        except (OSError, KeyError) as exc:
            for name, _ in self._live_agents():
                self._mark_failed(name, 'reading the source disks: %s' % exc)
            return
        self._synced.set()

    def _copy_disk(self, disk, chunk, step_seconds):
        with open(self.source.disk_file(disk.name), 'rb') as f:
            offset = 0
            while offset < disk.size:
                if self._stop.is_set():
                    return False
                data = f.read(min(chunk, disk.size - offset))
                if not data:
                    break
                for name, agent in self._live_agents():
                    self._write(name, agent, disk.name, offset, data)
                offset += len(data)
                self._stop.wait(step_seconds)
        return True

    def _write(self, name, agent, disk, offset, data):
        destination = agent.destination
        if destination.destroyed or (destination.status ==
                                     vocabulary.QemuStatus.FAILED):
            self._mark_failed(name, destination.reason or 'destination gone')
            return
        message = _fault(name, vocabulary.DestinationPhase.STREAM)
        if message and self._processed[name] * 2 >= self.total:
            self._mark_failed(name, message)
            return
        try:
            agent.write(disk, offset, data)
        except OSError as exc:
            self._mark_failed(name, 'writing disk %s: %s' % (disk, exc))
            return
        with self._lock:
            self._processed[name] += len(data)

    def ready(self):
        if not self._live_agents():
            raise exceptions.AllDestinationsFailed(
                reasons='every destination failed during the disk copy')
        return self._synced.is_set()

    def complete(self, timeout=disk_copy.COMPLETE_TIMEOUT):
        live = self._live_agents()
        if not live:
            raise exceptions.AllDestinationsFailed(
                reasons='every destination failed during the disk copy')
        for _name, agent in live:
            agent.complete()

    def progress(self):
        with self._lock:
            return {name: disk_copy.DiskProgress(
                self.total, self._processed[name],
                self.total - self._processed[name]) for name in self.names}

    def drop(self, name, reason):
        self._mark_failed(name, 'dropped: %s' % reason)

    def abort(self, reason):
        self.close()
        for name, agent in self._live_agents():
            if agent.copied is None:
                self._mark_failed(name, reason, False)

    def close(self):
        self._stop.set()
        if (self._thread is not None and
                self._thread is not threading.current_thread()):
            self._thread.join(5)


class FakeHypervisor(hypervisors.NovaHypervisor):
    """Fake guests on the host's (fake) libvirt connection, if any."""

    def __init__(self, connect=None):
        super().__init__(connect)

    @property
    def connection(self):
        if self._connect is None:
            return None
        return self._connect()

    def source(self, guest):
        conn = self.connection
        domain = _find_domain(conn, guest)
        xml = domain.XMLDesc(0) if domain is not None else ''
        host = conn.getHostname() if conn is not None else None
        return FakeSource(guest, domain, _memory_bytes(xml), host=host)

    def source_xml(self, domain_name):
        domain = _find_domain(self.connection, domain_name)
        if domain is None:
            raise exceptions.HypervisorError(
                operation='source_xml',
                reason='no domain named %s on this host' % domain_name)
        return domain.XMLDesc(0)

    def destination_from_xml(self, name, xml):
        conn = self.connection
        domain = None
        if conn is not None:
            if _find_domain(conn, _domain_name(xml, name)) is not None:
                raise exceptions.HypervisorError(
                    operation='create destination %s' % name,
                    reason='a domain of that name already exists here')
            with _DOMAIN_LOCK:
                domain = conn.createXML(xml, _START_PAUSED)
                domain.suspend()
        return FakeDestination(name, domain, _memory_bytes(xml))

    def destroy_incoming(self, domain_name):
        domain = _find_domain(self.connection, domain_name)
        if domain is None:
            return False
        if domain.info()[0] != _STATE_PAUSED:
            return False
        _destroy_domain(domain)
        return True

    def create_relay(self, secret, destinations, **kwargs):
        conn = self.connection
        _apply(conn.getHostname() if conn is not None else None,
               'relay_tls', kwargs.get('tls') is not None)
        return FakeRelay(secret, destinations, **kwargs)

    def create_disk_copy(self, source, disks, destinations, secret,
                         **kwargs):
        return FakeDiskCopy(source, disks, destinations, secret, **kwargs)
