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

"""The disk copy to N destinations with real QEMU mirror jobs and exports.

The source guest has a qcow2 disk over a base image, as Nova's image
backend makes; each destination is a paused incoming QEMU with its own
top image over the same base, serving it over NBD. The source's disk is
written through its virtio device while the mirror runs.
"""

import logging
import os
import signal
import subprocess
import tempfile

import ddt
import fixtures
import testtools

from nova_multidest.dataplane import disk_copy
from nova_multidest.dataplane import disk_relay
from nova_multidest.dataplane import guest
from nova_multidest.dataplane import nbd
from nova_multidest.dataplane import protocol
from nova_multidest.dataplane import qemu
from nova_multidest import exceptions
from tests.dataplane import demo_session_base
from tests.dataplane import qemu_fixture

MiB = 1 << 20
DISK_MB = 64
BASE_MB = 8
WAIT = 60
# A source kept IN_STEP with the healthy destinations puts at most that
# plus one write between them; a frozen one fills a few buffers, then
# falls behind by the rest. LAG_LIMIT lies between the two.
IN_STEP = 2 * MiB
LAG_LIMIT = 8 * MiB
# Halts between timer ticks, leaving the CPU to the copy.
GUEST = guest.DirtyingGuest(pages_per_tick=16)
wait_for = demo_session_base.wait_for


class DiskCopyTestBase(testtools.TestCase):
    """A source guest with one local disk, and destinations for it."""

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.FakeLogger(level=logging.INFO))
        self.qemu = self.useFixture(qemu_fixture.QemuFixture())
        self.hypervisor = self.qemu.hypervisor
        self.destinations = {}
        self.secret = protocol.new_secret()

    def boot(self, top_mb=40):
        """Boot the source over a base image, ``top_mb`` in its top image."""
        images = tempfile.mkdtemp(prefix='images-', dir=self.qemu.workdir)
        base = os.path.join(images, 'base.qcow2')
        qemu.create_image(base, DISK_MB * MiB)
        self._qemu_io_offline(base, 'write -P 0x11 0 %dM' % BASE_MB)
        top = os.path.join(images, 'vda.qcow2')
        qemu.create_image(top, DISK_MB * MiB, backing=base)
        if top_mb:
            self._qemu_io_offline(top, 'write -P 0x22 %dM %dM'
                                  % (BASE_MB // 2, top_mb))
        self.process = self.hypervisor.boot(
            'source', image=GUEST, disks=[qemu.QemuDisk('vda', top)])
        self.source = self.hypervisor.source(self.process)
        return self.source

    @staticmethod
    def _qemu_io_offline(path, command):
        subprocess.run(['qemu-io', '-f', 'qcow2', '-c', command, path],
                       check=True, capture_output=True)

    def prepare(self, names, tls=None, forward_tls=None):
        """Paused incoming destinations serving their disks; their agents."""
        disks = self.source.local_disks()
        addresses = []
        for name in names:
            dest = self.hypervisor.create_destination(name, self.source)
            self.addCleanup(dest.destroy)
            dest.start_incoming()
            exports = dest.export_disks(disks)
            addresses.append((name, dest.open_disk_stream(
                self.secret, exports, tls=tls, forward_tls=forward_tls)))
            self.destinations[name] = dest
        return disks, addresses

    def make_copy(self, names, topology='star', **kwargs):
        disks, addresses = self.prepare(
            names, tls=kwargs.pop('server_tls', None),
            forward_tls=kwargs.pop('forward_tls', None))
        self.dropped = {}
        copy = disk_copy.DiskCopy(
            self.source, disks, addresses, self.secret, topology=topology,
            on_drop=self.dropped.__setitem__, **kwargs)
        self.addCleanup(copy.close)
        return copy

    def write(self, offset_mb, length_kb, pattern):
        self.process.qemu_io('vda', 'write -P %d %dM %dk'
                             % (pattern, offset_mb, length_kb))

    def wait_ready(self, copy):
        self.assertTrue(wait_for(copy.ready, timeout=WAIT),
                        'the mirrors did not get in sync')

    def complete(self, copy):
        """Pause the source as at the switch-over and end the copy."""
        self.process.qmp.execute('stop')
        copy.complete()

    def assert_copies(self, expected):
        """Each of ``expected`` holds the source's disk, byte for byte."""
        source_digest = self.process.disk_digest('vda')
        for name in expected:
            dest = self.destinations[name]
            self.assertEqual('complete', dest._disk_writer.wait(WAIT),
                             dest.disk_copy_reason())
            self.assertTrue(dest.disks_copied())
            self.assertEqual(source_digest, dest.process.disk_digest('vda'),
                             'disk of %s differs from the source' % name)

    def assert_not_copied(self, name):
        dest = self.destinations[name]
        self.assertEqual('failed', dest._disk_writer.wait(WAIT))
        self.assertFalse(dest.disks_copied())
        self.assertRaises(exceptions.HypervisorError, dest.resume)

    def assert_source_untouched(self):
        self.assertEqual([], self.process.qmp.execute('query-block-jobs'))
        nodes = [n['node-name'] for n in
                 self.process.qmp.execute('query-named-block-nodes')]
        self.assertEqual([], [n for n in nodes if 'multidest' in n])


@ddt.ddt
class TestDiskCopy(DiskCopyTestBase):

    @ddt.data('star', 'chain')
    def test_three_destinations_while_the_guest_writes(self, topology):
        self.boot()
        before = self.process.disk_digest('vda')
        names = ['d1', 'd2', 'd3']
        copy = self.make_copy(names, topology=topology,
                              max_bandwidth=32 * MiB)
        copy.start()
        # Written during the background copy, over copied and uncopied
        # parts, into the base image's range and beyond the top's data.
        for index, offset in enumerate((1, 6, 20, 43, 50, 60)):
            self.write(offset, 512, index + 1)
        self.wait_ready(copy)
        for index, offset in enumerate((2, 6, 30, 44, 61)):
            self.write(offset, 64, 0x80 + index)
        self.complete(copy)
        self.assertNotEqual(before, self.process.disk_digest('vda'))
        self.assert_copies(names)
        self.assertEqual({}, self.dropped)
        progress = copy.progress()
        for name in names:
            self.assertEqual(0, progress[name].remaining_bytes)
            self.assertGreaterEqual(progress[name].total_bytes, 40 * MiB)

    def test_full_copy_of_a_flat_disk(self):
        images = tempfile.mkdtemp(prefix='images-', dir=self.qemu.workdir)
        flat = os.path.join(images, 'flat.qcow2')
        qemu.create_image(flat, DISK_MB * MiB)
        self._qemu_io_offline(flat, 'write -P 0x33 3M 10M')
        self.process = self.hypervisor.boot(
            'source', image=GUEST, disks=[qemu.QemuDisk('vda', flat)])
        self.source = self.hypervisor.source(self.process)
        self.assertFalse(self.source.local_disks()[0].shallow)
        copy = self.make_copy(['d1', 'd2'])
        copy.start()
        self.write(20, 256, 7)
        self.wait_ready(copy)
        self.complete(copy)
        self.assert_copies(['d1', 'd2'])

    def test_destination_killed_mid_copy(self):
        self.boot()
        names = ['d1', 'd2', 'd3']
        copy = self.make_copy(names, max_bandwidth=16 * MiB)
        copy.start()
        self.assertTrue(wait_for(
            lambda: copy.progress()['d2'].processed_bytes > 8 * MiB,
            timeout=WAIT))
        self.assertGreater(copy.progress()['d2'].remaining_bytes, 0)
        self.destinations['d2'].process.kill(signal.SIGKILL)
        self.write(50, 256, 9)
        self.wait_ready(copy)
        self.complete(copy)
        self.assert_copies(['d1', 'd3'])
        self.assert_not_copied('d2')
        self.assertEqual(['d1', 'd3'], copy.relay.live_destinations())
        self.assertIn('d2', self.dropped)

    def test_stalled_destination_dropped_on_lag(self):
        self.boot(top_mb=1)
        names = ['d1', 'd2', 'd3']
        copy = self.make_copy(names, lag_limit=LAG_LIMIT)
        copy.start()
        self.wait_ready(copy)
        # Frozen once its writer is connected: only falling behind can
        # tell the relay.
        frozen = self.destinations['d3'].process
        frozen.kill(signal.SIGSTOP)
        self.addCleanup(frozen.kill, signal.SIGCONT)
        healthy = [self.destinations[n]._disk_writer for n in ('d1', 'd2')]
        for index in range(4 * LAG_LIMIT // MiB):
            self.write(BASE_MB + index % 48, 1024, index)
            # In step with the healthy ones, so that however their
            # threads are scheduled only the frozen one falls behind.
            written = copy.relay.bytes_from_source
            self.assertTrue(wait_for(lambda: all(
                w.progress().get('vda', 0) >= written - IN_STEP
                for w in healthy), timeout=WAIT))
        self.assertEqual(['d1', 'd2'], copy.relay.live_destinations())
        self.assertIn('behind', self.dropped['d3'])
        self.complete(copy)
        self.assert_copies(['d1', 'd2'])
        frozen.kill(signal.SIGCONT)
        self.assert_not_copied('d3')

    def test_every_destination_failing_leaves_the_source_untouched(self):
        self.boot()
        before = self.process.disk_digest('vda')
        copy = self.make_copy(['d1', 'd2'], max_bandwidth=16 * MiB)
        copy.start()
        self.assertTrue(wait_for(
            lambda: copy.progress()['d1'].processed_bytes > 4 * MiB,
            timeout=WAIT))
        for dest in self.destinations.values():
            dest.process.kill(signal.SIGKILL)

        def failed():
            try:
                copy.ready()
            except (exceptions.AllDestinationsFailed,
                    exceptions.DiskCopyFailed):
                return True
            return False
        self.assertTrue(wait_for(failed, timeout=WAIT))
        copy.abort('every destination failed')
        self.assertEqual('running', self.process.run_state())
        self.assert_source_untouched()
        self.assertEqual(before, self.process.disk_digest('vda'))
        self.write(5, 64, 3)

    def test_abort_mid_copy(self):
        self.boot()
        copy = self.make_copy(['d1', 'd2'], topology='chain',
                              max_bandwidth=16 * MiB)
        copy.start()
        self.assertTrue(wait_for(
            lambda: copy.progress()['d2'].processed_bytes > 2 * MiB,
            timeout=WAIT))
        copy.abort('aborted by request')
        self.assertEqual('running', self.process.run_state())
        self.assert_source_untouched()
        for name in ('d1', 'd2'):
            self.assert_not_copied(name)

    def test_aborted_relay_answers_mirror_writes_with_an_error(self):
        """QEMU's connection is answered, never cut, after an abort.

        Cut under a write QEMU could not finish sending, QEMU 7.2's NBD
        client waits for good and its mirror job can neither fail nor be
        cancelled: a write larger than the socket buffers, sent after the
        abort, must still be read whole and refused.
        """
        self.boot(top_mb=4)
        disks, addresses = self.prepare(['d1', 'd2'])
        relay = disk_relay.DiskRelay(self.secret, addresses,
                                     {d.name: d.size for d in disks})
        self.addCleanup(relay.close)
        relay.start()
        client = nbd.Client(relay.take_source_socket('vda'), 'vda')
        self.addCleanup(client.sock.close)
        client.send_request(nbd.CMD_WRITE, 1, 0, MiB,
                            payload=bytes(MiB))
        self.assertEqual((1, 0), client.read_reply())
        relay.abort('aborted by request')
        client.send_request(nbd.CMD_WRITE, 2, MiB, 8 * MiB,
                            payload=bytes(8 * MiB))
        self.assertEqual((2, nbd.EIO), client.read_reply())
        client.disconnect()
        for name in ('d1', 'd2'):
            self.assert_not_copied(name)

    def test_completing_before_ready_fails(self):
        self.boot()
        copy = self.make_copy(['d1'], max_bandwidth=4 * MiB)
        copy.start()
        self.process.qmp.execute('stop')
        self.assertRaises(exceptions.DiskCopyFailed, copy.complete)
        copy.abort('the copy failed')
        self.assert_source_untouched()
        self.assert_not_copied('d1')


@ddt.ddt
class TestDiskCopyTLS(DiskCopyTestBase):

    def setUp(self):
        super().setUp()
        directory = tempfile.mkdtemp(prefix='tls-', dir=self.qemu.workdir)
        cert = os.path.join(directory, 'cert.pem')
        key = os.path.join(directory, 'key.pem')
        subprocess.run(
            ['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
             '-keyout', key, '-out', cert, '-days', '1',
             '-subj', '/CN=localhost',
             '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'],
            check=True, capture_output=True)
        self.server_tls, self.client_tls = protocol.make_tls_contexts(
            cert, key, cert)

    @ddt.data('star', 'chain')
    def test_copy_over_tls(self, topology):
        self.boot(top_mb=16)
        copy = self.make_copy(['d1', 'd2'], topology=topology,
                              tls=self.client_tls,
                              server_tls=self.server_tls,
                              forward_tls=self.client_tls)
        copy.start()
        self.write(30, 128, 5)
        self.wait_ready(copy)
        self.complete(copy)
        self.assert_copies(['d1', 'd2'])

    def test_plain_relay_cannot_reach_tls_agents(self):
        self.boot(top_mb=4)
        copy = self.make_copy(['d1'], server_tls=self.server_tls)
        self.assertRaises(exceptions.AllDestinationsFailed, copy.start)
        self.assert_source_untouched()
