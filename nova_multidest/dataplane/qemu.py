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

"""The hypervisor interface over raw QEMU processes.

Used by the demo, the data-plane tests and the benchmark: every guest is
one ``qemu-system-x86_64`` process we start ourselves, with TCG (no KVM
is needed), no default devices, and QMP on a unix socket in a private
directory. Removing that directory and killing that PID removes every bit
of a guest, which is what "destroy a loser" must mean.
"""

import collections
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import zlib

from nova_multidest.dataplane import guest as guest_image
from nova_multidest.dataplane import hypervisor
from nova_multidest.dataplane import nbd
from nova_multidest.dataplane import qmp
from nova_multidest.dataplane import qmp_disks
from nova_multidest import exceptions
from nova_multidest import vocabulary

LOG = logging.getLogger(__name__)

QEMU_BINARY = 'qemu-system-x86_64'
MiB = 1 << 20
BOOT_TIMEOUT = 30
# A raw QEMU source may also be stopped before it ever ran.
_RESUMABLE = vocabulary.QemuRunState.PAUSED_AFTER_MIGRATION + (
    vocabulary.QemuRunState.PRELAUNCH, vocabulary.QemuRunState.INMIGRATE)
QEMU_IMG = 'qemu-img'
DIGEST_CHUNK = 4 * MiB
PAGE = 4096


@dataclasses.dataclass(frozen=True)
class QemuDisk:
    """A disk image attached as a virtio disk whose device id is ``name``."""

    name: str
    path: str
    format: str = 'qcow2'

    @property
    def node(self):
        return 'disk-%s' % self.name

    def argv(self):
        blockdev = {'driver': self.format, 'node-name': self.node,
                    'file': {'driver': 'file', 'filename': self.path}}
        return ['-blockdev', json.dumps(blockdev),
                '-device', 'virtio-blk-pci,drive=%s,id=%s' % (self.node,
                                                              self.name)]


def image_info(path):
    """``qemu-img info`` of an image, even one a running QEMU holds."""
    out = subprocess.run([QEMU_IMG, 'info', '-U', '--output=json', path],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def create_image(path, size, fmt='qcow2', backing=None, backing_format=None):
    argv = [QEMU_IMG, 'create', '-q', '-f', fmt]
    if backing:
        argv += ['-F', backing_format or 'qcow2', '-b', backing]
    subprocess.run(argv + [path, str(size)], check=True,
                   capture_output=True)


class QemuProcess(object):
    """One QEMU process, its directory and its QMP session."""

    def __init__(self, name, kernel, memory_mb, incoming=False,
                 binary=QEMU_BINARY, parent_dir=None, command_prefix=(),
                 disks=(), owned_dirs=()):
        self.name = name
        self.kernel = kernel
        self.memory_mb = memory_mb
        self.disks = list(disks)
        self.dir = tempfile.mkdtemp(prefix='multidest-%s-' % name,
                                    dir=parent_dir)
        # Removed with the process: e.g. the directory of its disks.
        self.owned_dirs = list(owned_dirs)
        self._listeners = []
        self._exit_lock = threading.Lock()
        self.exited_at = None
        qmp_path = os.path.join(self.dir, 'qmp.sock')
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(qmp_path)
            listener.listen(1)
            # command_prefix runs QEMU through e.g. "ip netns exec NS",
            # which execs, so the PID stays QEMU's own.
            argv = list(command_prefix) + [
                binary, '-name', name, '-accel', 'tcg',
                '-machine', 'pc', '-smp', '1', '-m', str(memory_mb),
                '-nodefaults', '-no-user-config', '-display', 'none',
                '-kernel', kernel,
                '-chardev', 'socket,id=qmp,path=%s' % qmp_path,
                '-mon', 'chardev=qmp,mode=control']
            for disk in self.disks:
                argv += disk.argv()
            if incoming:
                argv += ['-S', '-incoming', 'defer']
            self.log_path = os.path.join(self.dir, 'qemu.log')
            with open(self.log_path, 'wb') as log:
                self.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True)
            self.pid = self.proc.pid
            LOG.debug('Started QEMU %s pid %s', name, self.pid)
            try:
                self.qmp = qmp.QMPClient.accept(
                    listener, name=name, alive=self.is_alive)
            except Exception:
                self.kill()
                raise
        finally:
            listener.close()
        self._waiter = threading.Thread(target=self._wait_exit,
                                        name='wait-%s' % name, daemon=True)
        self._waiter.start()
        self.exports = qmp_disks.Exports(self.qmp.execute, self.qmp.getfd,
                                         self.dir)

    def _wait_exit(self):
        self.proc.wait()
        with self._exit_lock:
            self.exited_at = time.time()
            listeners = list(self._listeners)
        LOG.debug('QEMU %s pid %s exited with %s', self.name, self.pid,
                  self.proc.returncode)
        for callback in listeners:
            try:
                callback(self.exited_at, self.proc.returncode)
            except Exception:
                LOG.exception('exit callback failed')

    def on_exit(self, callback):
        """Call ``callback(timestamp, returncode)`` when QEMU exits."""
        with self._exit_lock:
            exited_at = self.exited_at
            if exited_at is None:
                self._listeners.append(callback)
        if exited_at is not None:
            callback(exited_at, self.proc.returncode)

    def is_alive(self):
        return self.proc.poll() is None

    def wait(self, timeout=None):
        """Wait for the process to exit; True if it did."""
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self, sig=signal.SIGKILL):
        """Signal the process by its PID (only ours, never by name)."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def destroy(self):
        """Kill the process and remove its directory; idempotent."""
        self.kill()
        self.proc.wait()
        qmp_client = getattr(self, 'qmp', None)
        if qmp_client is not None:
            qmp_client.close()
        for directory in [self.dir] + self.owned_dirs:
            shutil.rmtree(directory, ignore_errors=True)

    def run_state(self):
        return self.qmp.execute('query-status')['status']

    def registers(self):
        """``info registers`` text, for comparing two paused copies."""
        return self.qmp.hmp('info registers')

    def read_u32(self, address):
        """A 32-bit word of guest-physical memory."""
        out = self.qmp.hmp('xp /1wx %#x' % address)
        return int(out.split(':')[1].split()[0], 16)

    def disk(self, name):
        for disk in self.disks:
            if disk.name == name:
                return disk
        raise exceptions.HypervisorError(
            operation='find disk %s of %s' % (name, self.name),
            reason='it has disks %s' % ', '.join(d.name for d in self.disks))

    def qemu_io(self, disk, command):
        """Run a qemu-io command on a disk as the guest's device would.

        Writes go through the device's block backend, so a running mirror
        job sees them exactly as it sees the guest's own writes.
        """
        out = self.qmp.hmp('qemu-io -d %s/virtio-backend "%s"'
                           % (self.disk(disk).name, command))
        if 'error' in out.lower() or 'failed' in out.lower():
            raise exceptions.HypervisorError(
                operation='qemu-io %s on %s' % (command, self.name),
                reason=out.strip())
        return out

    def disk_digest(self, name):
        """SHA-256 of what the guest reads from disk ``name``.

        Read through a read-only NBD export of the live disk, so it sees
        exactly the data QEMU serves, cached metadata included.
        """
        serving = self.exports.serving
        export = 'digest-%s' % name
        path, _ = self.exports.start({export: self.disk(name).node},
                                     writable=False)[export]
        digest = hashlib.sha256()
        try:
            client = nbd.Client.connect(path, export)
            try:
                for offset in range(0, client.size, DIGEST_CHUNK):
                    digest.update(client.read(
                        offset, min(DIGEST_CHUNK, client.size - offset)))
            finally:
                client.disconnect()
        finally:
            self.exports.remove(export)
            if not serving:
                self.exports.stop()
        return digest.hexdigest()

    def memory_digest(self):
        return self.memory_image().digest

    def memory_image(self):
        """The guest's RAM as a MemoryImage (the guest should be paused)."""
        path = os.path.join(self.dir, 'memory.bin')
        self.qmp.execute('pmemsave', val=0, size=self.memory_mb * MiB,
                         filename=path, timeout=120)
        try:
            with open(path, 'rb') as f:
                return MemoryImage(f.read())
        finally:
            os.unlink(path)


PageDifference = collections.namedtuple(
    'PageDifference', 'address expected actual')


class MemoryImage(object):
    """Guest-physical RAM from address 0, compared page by page.

    A digest tells that two copies differ; which words of which pages,
    and what each copy holds there, tells why: e.g. a copy holding an
    older value of the guest's counter than its source lacks a write the
    source made. Kept compressed (a test keeps several).
    """

    def __init__(self, data):
        self.digest = hashlib.sha256(data).hexdigest()
        self.size = len(data)
        self._packed = zlib.compress(data, 1)

    @property
    def data(self):
        return zlib.decompress(self._packed)

    def __eq__(self, other):
        return (isinstance(other, MemoryImage) and
                self.digest == other.digest)

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash(self.digest)

    def __repr__(self):
        return '<MemoryImage %d MiB sha256 %s>' % (self.size // MiB,
                                                   self.digest[:16])

    def differences(self, other):
        """A PageDifference per differing page, at its first differing word.

        ``address`` is that word's; ``expected`` is this image's 32-bit
        word there, ``actual`` the other's (None past the end of the
        shorter image).
        """
        if self == other:
            return []
        mine, theirs = self.data, other.data
        found = []
        for page in range(0, max(len(mine), len(theirs)), PAGE):
            a, b = mine[page:page + PAGE], theirs[page:page + PAGE]
            if a == b:
                continue
            offset = next((i for i in range(0, PAGE, 4)
                           if a[i:i + 4] != b[i:i + 4]), 0)
            found.append(PageDifference(page + offset, _word(a, offset),
                                        _word(b, offset)))
        return found

    def words(self, address, count):
        """``count`` 32-bit words from ``address``."""
        data = self.data
        return [_word(data, address + 4 * i) for i in range(count)]

    def describe_differences(self, other, limit=8):
        """For a failure message: how many pages differ, the first few.

        This image is the reference (the source), ``other`` the copy.
        """
        found = self.differences(other)
        text = '%d of %d pages differ' % (len(found),
                                          -(-self.size // PAGE))
        if found:
            text += (' (first differing word: in the reference / in the '
                     'copy): ' + ', '.join(
                         '%#x: %s / %s' % (d.address, _hex(d.expected),
                                           _hex(d.actual))
                         for d in found[:limit]))
        return text


def _word(data, offset):
    chunk = data[offset:offset + 4]
    return struct.unpack('<I', chunk)[0] if len(chunk) == 4 else None


def _hex(word):
    return 'none' if word is None else '%#x' % word


class _QemuGuest(hypervisor.Guest):
    """Event plumbing shared by both ends."""

    def __init__(self, process):
        self.process = process
        self.name = process.name
        self._subscribers = hypervisor.Subscribers(self.name)
        process.qmp.add_event_callback(self._on_qmp_event)
        process.on_exit(self._on_exit)

    def _emit(self, event):
        self._subscribers.emit(event)

    def _on_qmp_event(self, event):
        self._on_job_event(event.name, event.data)
        kind = {'STOP': hypervisor.EVENT_STOPPED,
                'RESUME': hypervisor.EVENT_RESUMED,
                'MIGRATION': hypervisor.EVENT_MIGRATION,
                'MIGRATION_PASS': hypervisor.EVENT_PASS}.get(event.name)
        if kind is not None:
            self._emit(hypervisor.GuestEvent(
                guest=self.name, kind=kind, timestamp=event.timestamp,
                status=event.data.get('status'),
                iteration=event.data.get('pass')))

    def _on_exit(self, timestamp, returncode):
        self._emit(hypervisor.GuestEvent(
            guest=self.name, kind=hypervisor.EVENT_EXITED,
            timestamp=timestamp, detail='exit code %s' % returncode))

    def subscribe(self, callback):
        self._subscribers.add(callback)

    def _on_job_event(self, name, data):
        """Block job events; a source mirroring disks takes them."""

    def _watch_jobs(self):
        """QMP events always reach ``_on_qmp_event``."""

    def is_alive(self):
        return self.process.is_alive()

    def is_running(self):
        if not self.is_alive():
            return False
        try:
            return (self.process.run_state() ==
                    vocabulary.QemuRunState.RUNNING)
        except exceptions.QMPError:
            return False

    def memory_digest(self):
        return self.process.memory_digest()

    def registers(self):
        return self.process.registers()


class QemuSource(qmp_disks.MirroringSource, _QemuGuest,
                 hypervisor.SourceGuest):

    def set_capabilities(self, capabilities):
        self.process.qmp.execute('migrate-set-capabilities', capabilities=[
            {'capability': name, 'state': bool(state)}
            for name, state in capabilities.items()])

    def set_parameters(self, max_bandwidth=None, downtime_limit_ms=None,
                       multifd_channels=None):
        params = hypervisor.qmp_parameters(max_bandwidth, downtime_limit_ms,
                                           multifd_channels)
        if params:
            self.process.qmp.execute('migrate-set-parameters', **params)

    def migrate(self, uri):
        self.process.qmp.execute('migrate', uri=uri)

    def stats(self):
        return hypervisor.MigrationStats.from_query_migrate(
            self.process.qmp.execute('query-migrate'))

    def cancel(self):
        try:
            self.process.qmp.execute('migrate_cancel')
        except exceptions.QMPError as exc:
            LOG.warning('migrate_cancel on %s: %s', self.name, exc)

    def resume(self):
        if self.process.run_state() in _RESUMABLE:
            self.process.qmp.execute('cont')

    # -- disks -------------------------------------------------------------

    def continue_migration(self):
        self.process.qmp.execute(
            'migrate-continue', state=vocabulary.QemuStatus.PRE_SWITCHOVER)

    def local_disks(self):
        nodes = {}
        for device in self.process.qmp.execute('query-block'):
            inserted = device.get('inserted') or {}
            nodes[inserted.get('node-name')] = inserted.get('image') or {}
        disks = []
        for disk in self.process.disks:
            image = nodes.get(disk.node, {})
            disks.append(hypervisor.LocalDisk(
                name=disk.name, size=int(image.get('virtual-size', 0)),
                shallow=bool(image.get('backing-filename'))))
        return disks

    def _mirror_commands(self):
        return self.process.qmp.execute, self.process.qmp.getfd

    def _disk_nodes(self, disks):
        return {disk.name: self.process.disk(disk.name).node
                for disk in disks}


class QemuDestination(_QemuGuest, hypervisor.DestinationGuest):

    @property
    def listen_uri(self):
        """Where QEMU itself listens for the incoming stream."""
        return 'unix:%s' % os.path.join(self.process.dir, 'incoming.sock')

    @property
    def incoming_target(self):
        return self.listen_uri

    def start_incoming(self, capabilities=None, multifd_channels=0):
        caps = {'events': True, 'late-block-activate': True}
        caps.update(capabilities or {})
        self.process.qmp.execute('migrate-set-capabilities', capabilities=[
            {'capability': name, 'state': bool(state)}
            for name, state in caps.items()])
        if multifd_channels:
            self.process.qmp.execute(
                'migrate-set-parameters',
                **hypervisor.qmp_parameters(multifd_channels=multifd_channels))
        self.process.qmp.execute('migrate-incoming', uri=self.listen_uri)

    def migration_status(self):
        if not self.is_alive():
            return vocabulary.QemuStatus.FAILED
        try:
            return self.process.qmp.execute('query-migrate').get(
                'status', vocabulary.QemuStatus.NONE)
        except exceptions.QMPError:
            return vocabulary.QemuStatus.FAILED

    def export_disks(self, disks):
        return self.process.exports.start(
            {disk.name: self.process.disk(disk.name).node for disk in disks})

    def resume(self):
        self.check_disks_copied()
        try:
            self.process.exports.stop()
            self.process.qmp.execute('cont')
            self.process.qmp.execute('announce-self',
                                     **hypervisor.ANNOUNCE_SELF)
        except exceptions.QMPError as exc:
            raise exceptions.HypervisorError(operation='resume %s' % self.name,
                                             reason=str(exc))

    def destroy(self):
        self.close_stream()
        self.process.destroy()


class QemuHypervisor(hypervisor.Hypervisor):
    """Starts and tracks QEMU processes on this host.

    Every process it starts stays listed in ``processes`` so that tests
    and the demo can prove none is left behind.
    """

    def __init__(self, binary=QEMU_BINARY, parent_dir=None):
        self.binary = binary
        self.parent_dir = parent_dir
        self.processes = []

    def boot(self, name, memory_mb=64, image=None, disks=()):
        """Start a running guest from the tiny dirtying kernel.

        ``disks`` are QemuDisk images the guest gets as virtio disks (the
        kernel never touches them; tests write them with ``qemu_io``).
        Returns once the guest runs its dirtying loop.
        """
        image = image or guest_image.DirtyingGuest()
        image.validate(memory_mb)
        image_dir = tempfile.mkdtemp(prefix='multidest-image-',
                                     dir=self.parent_dir)
        kernel = image.write(image_dir)
        try:
            process = self._spawn(name, kernel, memory_mb, incoming=False,
                                  disks=disks)
        except Exception:
            shutil.rmtree(image_dir, ignore_errors=True)
            raise
        # Destinations start from the same kernel file, so it lives as
        # long as the source process.
        process.image_dir = image_dir
        deadline = time.monotonic() + BOOT_TIMEOUT
        while not image.booted(process.read_u32):
            if time.monotonic() > deadline or not process.is_alive():
                with open(process.log_path, errors='replace') as log:
                    output = log.read()[-2000:]
                process.destroy()
                raise exceptions.HypervisorError(
                    operation='boot %s' % name,
                    reason='the guest did not start its loop in %ss; QEMU '
                           'said: %s' % (BOOT_TIMEOUT, output or 'nothing'))
            time.sleep(0.01)
        return process

    def command_prefix(self, name):
        """What QEMU for guest ``name`` is started through (nothing)."""
        return ()

    def _spawn(self, name, kernel, memory_mb, incoming, disks=(),
               owned_dirs=()):
        try:
            process = QemuProcess(name, kernel, memory_mb, incoming=incoming,
                                  binary=self.binary,
                                  parent_dir=self.parent_dir,
                                  command_prefix=self.command_prefix(name),
                                  disks=disks, owned_dirs=owned_dirs)
        except Exception:
            for directory in owned_dirs:
                shutil.rmtree(directory, ignore_errors=True)
            raise
        self.processes.append(process)
        return process

    def source(self, guest):
        process = guest.process if isinstance(guest, _QemuGuest) else guest
        return QemuSource(process)

    destination_class = QemuDestination

    def create_destination(self, name, source):
        src = source.process
        disks, disk_dir = self._destination_disks(name, src)
        process = self._spawn(name, src.kernel, src.memory_mb, incoming=True,
                              disks=disks,
                              owned_dirs=[disk_dir] if disk_dir else ())
        return self.destination_class(process)

    def _destination_disks(self, name, src):
        """Empty copies of the source's disks, as Nova's image cache makes.

        A disk over a backing image gets a new top image over the same
        backing file; a flat one an empty image of the same size.
        """
        if not src.disks:
            return [], None
        disk_dir = tempfile.mkdtemp(prefix='multidest-%s-disks-' % name,
                                    dir=self.parent_dir)
        disks = []
        try:
            for disk in src.disks:
                info = image_info(disk.path)
                path = os.path.join(disk_dir, os.path.basename(disk.path))
                create_image(
                    path, info['virtual-size'], disk.format,
                    backing=info.get('full-backing-filename'),
                    backing_format=info.get('backing-filename-format'))
                disks.append(QemuDisk(disk.name, path, disk.format))
        except (OSError, subprocess.CalledProcessError) as exc:
            shutil.rmtree(disk_dir, ignore_errors=True)
            raise exceptions.HypervisorError(
                operation='create the disks of %s' % name, reason=str(exc))
        return disks, disk_dir

    def live_processes(self):
        return [p for p in self.processes if p.is_alive()]

    def destroy_all(self):
        """Kill every process we started and remove their directories."""
        for process in self.processes:
            process.destroy()
            image_dir = getattr(process, 'image_dir', None)
            if image_dir:
                shutil.rmtree(image_dir, ignore_errors=True)
