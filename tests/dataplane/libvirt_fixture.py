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

"""A private libvirtd for tests and benchmarks, stopped with all it ran.

The daemon runs in a private mount namespace (tools/lab/libvirtd.py
prepares it, as the lab does for its hosts), so its configuration, state
directories and sockets are its own and nothing of the host's libvirt is
touched.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
import threading
import time
import uuid

import fixtures
import libvirt

from nova_multidest.virt.hypervisors import libvirt as libvirt_ext
from tools.lab import libvirtd

GUEST_MEMORY_MB = 64
START_TIMEOUT = 20
_event_loop_lock = threading.Lock()
_event_loop = []


def run_event_loop():
    """libvirt's default event loop in a thread, once per process.

    What nova-compute's Host does before it connects: the hypervisor
    extension learns of QEMU's events only on a connection opened after
    the loop was registered.
    """
    with _event_loop_lock:
        if _event_loop:
            return
        libvirt.virEventRegisterDefaultImpl()
        thread = threading.Thread(target=_run_event_loop, daemon=True,
                                  name='libvirt-event-loop')
        thread.start()
        _event_loop.append(thread)


def _run_event_loop():
    while True:
        libvirt.virEventRunDefaultImpl()


class LibvirtDaemon(fixtures.Fixture):
    """A private libvirtd; stopped, with every domain it ran, on cleanup.

    With ``hostname`` it also gets its own UTS namespace, that name and a
    host UUID of its own: libvirt migrates between two such daemons as
    between two hosts.
    """

    def __init__(self, hostname=None):
        super().__init__()
        self.hostname = hostname

    def _setUp(self):
        self.dir = tempfile.mkdtemp(prefix='multidest-libvirtd-')
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        libvirtd.prepare(self.dir)
        self.uri = libvirtd.uri(self.dir)
        self.log_path = os.path.join(self.dir, 'libvirtd.log')
        with open(self.log_path, 'wb') as log:
            self.process = subprocess.Popen(
                libvirtd.namespace_command(
                    self.dir, libvirtd.daemon_command(self.dir),
                    hostname=self.hostname or ''),
                stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        self.qemu_pids = set()
        self.addCleanup(self._stop)
        run_event_loop()
        self.connection = self._connect()

    def _connect(self):
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError('libvirtd exited: %s' % self.log())
            try:
                return libvirt.open(self.uri)
            except libvirt.libvirtError:
                if time.monotonic() > deadline:
                    raise RuntimeError('libvirtd did not answer within '
                                       '%ss: %s' % (START_TIMEOUT, self.log()))
            # No event to wait for: the socket appears once the daemon
            # has initialised its drivers.
            time.sleep(0.1)

    def log(self):
        with open(self.log_path, errors='replace') as f:
            return f.read()[-4000:]

    def note_qemu_pids(self):
        """Remember the QEMU processes of the daemon's domains."""
        self.qemu_pids |= libvirtd.qemu_pids(
            self.dir, [d.name() for d in self.connection.listAllDomains(0)])
        return set(self.qemu_pids)

    def live_qemu_pids(self):
        return {pid for pid in self.qemu_pids if _alive(pid)}

    def _stop(self):
        try:
            self.note_qemu_pids()
            for domain in self.connection.listAllDomains(0):
                libvirt_ext._destroy_domain(domain)
            self.connection.close()
        except libvirt.libvirtError:
            pass
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        for pid in self.live_qemu_pids():
            os.kill(pid, signal.SIGKILL)


def _alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().split(')')[-1].split()[0] != 'Z'
    except OSError:
        return False


def source_xml(name, kernel, memory_mb=GUEST_MEMORY_MB, disk=None):
    """A one-vCPU TCG guest booting ``kernel``; ``disk`` a qcow2 as vda."""
    disk_xml = '' if disk is None else textwrap.dedent('''\
        <disk type='file' device='disk'>
          <driver name='qemu' type='qcow2' cache='none'/>
          <source file='%s'/>
          <target dev='vda' bus='virtio'/>
        </disk>
        ''') % disk
    return textwrap.dedent('''\
        <domain type='qemu'>
          <name>%s</name>
          <uuid>%s</uuid>
          <memory unit='MiB'>%d</memory>
          <vcpu>1</vcpu>
          <os>
            <type arch='x86_64' machine='pc'>hvm</type>
            <kernel>%s</kernel>
          </os>
          <devices>
            <emulator>/usr/bin/qemu-system-x86_64</emulator>
            %s
          </devices>
        </domain>
        ''') % (name, uuid.uuid4(), memory_mb, kernel, disk_xml)
