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

"""Local disks copied by the libvirt extension, real libvirtd and QEMU.

The source domain has a qcow2 disk over a base image, as Nova's image
backend makes; each destination is a paused incoming domain with its own
top image over the same base (what Nova's pre-live-migration makes from
the image cache) serving it over QEMU's NBD server. The engine
(``SourceStream`` with a ``DiskCopy``) mirrors the disk once into the
disk relay, streams memory once every mirror is in sync, and ends the
mirrors while QEMU pauses before the switch-over.
"""

import os
import subprocess
import threading
import uuid

import fixtures
import libvirt
import testtools

from nova_multidest.dataplane import disk_copy
from nova_multidest.dataplane import guest as guest_image
from nova_multidest.dataplane import protocol
from nova_multidest.dataplane import qemu
from nova_multidest.dataplane import source_stream
from nova_multidest import exceptions
from nova_multidest.virt.hypervisors import libvirt as libvirt_ext
from nova_multidest import vocabulary
from tests.dataplane import demo_session_base
from tests.dataplane import libvirt_fixture
from tests.dataplane import test_libvirt_extension as extension_test

MiB = 1 << 20
DISK_MB = 64
BASE_MB = 8
TOP_MB = 24
WAIT = 120
wait_for = demo_session_base.wait_for


def qemu_io_offline(path, command):
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', command, path],
                   check=True, capture_output=True)


def same_content(first, second):
    """True if two images hold the same guest-visible bytes."""
    result = subprocess.run(
        ['qemu-img', 'compare', '-U', '-f', 'qcow2', '-F', 'qcow2', first,
         second], capture_output=True, text=True)
    if result.returncode not in (0, 1):
        raise AssertionError('qemu-img compare failed: %s' % result.stderr)
    return result.returncode == 0


class LibvirtDiskTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        libvirt.registerErrorHandler(lambda context, error: None, None)
        self.daemon = self.useFixture(libvirt_fixture.LibvirtDaemon())
        self.conn = self.daemon.connection
        self.work_dir = self.useFixture(fixtures.TempDir()).path
        kernel = guest_image.DirtyingGuest(pages_per_tick=16).write(
            self.work_dir)
        self.base = os.path.join(self.work_dir, 'base.qcow2')
        qemu.create_image(self.base, DISK_MB * MiB)
        qemu_io_offline(self.base, 'write -P 0x11 0 %dM' % BASE_MB)
        self.top = self._top('source')
        qemu_io_offline(self.top, 'write -P 0x22 %dM %dM'
                        % (BASE_MB // 2, TOP_MB))
        self.name = 'multidest-src-%s' % uuid.uuid4().hex[:8]
        self.conn.createXML(
            libvirt_fixture.source_xml(self.name, kernel, disk=self.top), 0)
        self.hv = libvirt_ext.LibvirtHypervisor(
            lambda: self.conn, rename_destinations=True,
            work_dir=self.work_dir)
        self.source = self.hv.source(self.name)
        self.secret = protocol.new_secret()
        self.destinations = {}

    def _top(self, name):
        path = os.path.join(self.work_dir, '%s.qcow2' % name)
        qemu.create_image(path, DISK_MB * MiB, backing=self.base)
        return path

    def prepare(self, names):
        """Paused incoming domains over their own top images, exporting."""
        disks = self.source.local_disks()
        xml = self.hv.source_xml(self.name)
        memory, disk = [], []
        for name in names:
            dest = self.hv.destination_from_xml(
                name, xml.replace(self.top, self._top(name)))
            self.addCleanup(dest.destroy)
            dest.start_incoming()
            exports = dest.export_disks(disks)
            memory.append((name, dest.open_stream(self.secret)))
            disk.append((name, dest.open_disk_stream(self.secret, exports)))
            self.destinations[name] = dest
        return disks, memory, disk

    def stream(self, names, warm_up=False, mirror_bandwidth=0):
        disks, memory, disk = self.prepare(names)
        self.dropped = {}
        copy = disk_copy.DiskCopy(
            self.source, disks, disk, self.secret,
            on_drop=self.dropped.__setitem__, max_bandwidth=mirror_bandwidth)
        stream = source_stream.SourceStream(
            self.source, self.hv.create_relay(self.secret, memory),
            source_stream.StreamSettings(
                warm_up=warm_up, downtime_limit_ms=2000,
                max_bandwidth=1024 * MiB, sample_interval=0.1),
            disks=copy)
        self.addCleanup(stream.close)
        stream.start(lambda func: threading.Thread(
            target=func, daemon=True).start())
        return copy, stream

    def write(self, offset_mb, length_kb, pattern):
        out = libvirt_ext._qmp(
            self.source.domain, 'human-monitor-command',
            **{'command-line': 'qemu-io -d virtio-disk0/virtio-backend '
                               '"write -P %d %dM %dk"'
                               % (pattern, offset_mb, length_kb)})
        self.assertNotIn('error', out.lower())

    def dest_image(self, name):
        return os.path.join(self.work_dir, '%s.qcow2' % name)

    def assert_source_untouched(self):
        self.assertEqual([], libvirt_ext._qmp(self.source.domain,
                                              'query-block-jobs'))
        nodes = [n['node-name'] for n in libvirt_ext._qmp(
            self.source.domain, 'query-named-block-nodes')]
        self.assertEqual([], [n for n in nodes if 'multidest' in n])

    def test_disk_written_during_migration_arrives_on_the_winner(self):
        names = ['d1', 'd2', 'd3']
        copy, stream = self.stream(names, warm_up=True)
        self.write(1, 512, 1)
        self.write(40, 512, 2)
        waiter = extension_test.StatusWaiter(self.destinations['d1'])
        waiter.wait_active(WAIT)
        # The memory stream runs: every mirror is in sync now.
        for index, offset in enumerate((2, 6, 30, 61)):
            self.write(offset, 64, 0x80 + index)
        stream.switch_over()
        self.assertTrue(stream.wait(WAIT), stream.status())
        self.assertEqual(vocabulary.QemuStatus.COMPLETED,
                         self.source.stats().status)
        self.assert_source_untouched()
        for name in names:
            dest = self.destinations[name]
            waiter = extension_test.StatusWaiter(dest)
            self.assertEqual(vocabulary.QemuStatus.COMPLETED,
                             waiter.wait_final(WAIT))
            self.assertEqual('complete', dest._disk_writer.wait(WAIT),
                             dest.disk_copy_reason())
        status = stream.status()
        for name in names:
            self.assertEqual(0, status['disks'][name]['remaining_bytes'])
            self.assertGreaterEqual(status['disks'][name]['total_bytes'],
                                    TOP_MB * MiB)
        ram = self.source.memory_digest(self.work_dir)
        winner = self.destinations['d2']
        self.assertEqual(ram, winner.memory_digest(self.work_dir))
        winner.resume()
        self.assertTrue(winner.is_running())
        self.assertTrue(same_content(self.top, self.dest_image('d2')),
                        'the winner\'s disk differs from the source\'s')
        self.assertFalse(same_content(self.base, self.dest_image('d2')))

    def test_destination_killed_mid_copy_is_dropped(self):
        names = ['d1', 'd2', 'd3']
        copy, stream = self.stream(names, mirror_bandwidth=8 * MiB)
        self.assertTrue(wait_for(
            lambda: copy.progress()['d2'].processed_bytes > 4 * MiB,
            timeout=WAIT))
        self.assertGreater(copy.progress()['d2'].remaining_bytes, 0)
        killed = self.destinations['d2']
        killed.domain.destroy()
        self.write(50, 256, 9)
        self.assertTrue(stream.wait(WAIT), stream.status())
        self.assertEqual(vocabulary.QemuStatus.COMPLETED,
                         self.source.stats().status)
        self.assertIn('d2', self.dropped)
        self.assertEqual(['d1', 'd3'], copy.relay.live_destinations())
        self.assertFalse(killed.disks_copied())
        self.assertRaises(exceptions.HypervisorError, killed.resume)
        winner = self.destinations['d3']
        self.assertEqual('complete', winner._disk_writer.wait(WAIT))
        # The source completes when its last byte left; a star's second
        # destination takes its last pages after the leader's.
        self.assertEqual(
            vocabulary.QemuStatus.COMPLETED,
            extension_test.StatusWaiter(winner).wait_final(WAIT))
        winner.resume()
        self.assertTrue(same_content(self.top, self.dest_image('d3')))

    def test_every_destination_failing_leaves_the_source_untouched(self):
        before = os.path.join(self.work_dir, 'before.qcow2')
        subprocess.run(['qemu-img', 'convert', '-U', '-O', 'qcow2',
                        self.top, before], check=True, capture_output=True)
        copy, stream = self.stream(['d1', 'd2'], mirror_bandwidth=8 * MiB)
        self.assertTrue(wait_for(
            lambda: copy.progress()['d1'].processed_bytes > 2 * MiB,
            timeout=WAIT))
        for dest in self.destinations.values():
            dest.domain.destroy()
        self.assertTrue(stream.wait(WAIT), stream.status())
        self.assertEqual(vocabulary.QemuStatus.FAILED,
                         stream.status()['state'])
        self.assertIn('every destination failed', stream.status()['error'])
        self.assertTrue(self.source.is_running())
        self.assert_source_untouched()
        self.assertTrue(same_content(before, self.top))
        # The guest's disk works on as before.
        self.write(5, 64, 3)
        self.assertFalse(same_content(before, self.top))

    def test_a_disk_that_cannot_be_mirrored_is_named(self):
        error = self.assertRaises(exceptions.DiskNotMirrorable,
                                  self.source.local_disks, ['vdb'])
        self.assertIn('vdb', str(error))
        self.assertEqual(['vda'],
                         [d.name for d in self.source.local_disks()])
        self.assertTrue(self.source.local_disks()[0].shallow)
