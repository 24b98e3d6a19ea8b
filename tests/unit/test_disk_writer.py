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

"""The disk writer's rules, against an NBD server whose replies we hold.

NBD does not order requests in flight, so the writer must never have two
that touch the same bytes in flight, must flush only what completed, and
must never call a disk copied unless its stream reached END. QEMU answers
too fast to show the first two, so the export here is our own NBD server
code answering only when the test says.
"""

import os
import shutil
import socket
import tempfile
import threading
import time

import testtools

from nova_multidest.dataplane import disk_writer
from nova_multidest.dataplane import diskstream
from nova_multidest.dataplane import nbd

KiB = 1 << 10
SIZE = 1 << 20
WAIT = 10


def wait_for(predicate, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class HeldExport(object):
    """An NBD export that replies only to the handles released to it.

    For every request it records what else was in flight (sent and not
    yet answered) when it arrived.
    """

    def __init__(self, path, size=SIZE, errors=None):
        self.size = size
        self.errors = errors or {}
        self.arrived = []
        self.in_flight = {}
        self.overlaps = []
        self.data = bytearray(size)
        self.cond = threading.Condition()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.conn = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.conn, _ = self.listener.accept()
            nbd.serve_handshake(self.conn, 'vda', self.size,
                                nbd.TRANS_HAS_FLAGS | nbd.TRANS_SEND_FLUSH)
            while True:
                request = nbd.read_request(self.conn)
                payload = None
                if request.command == nbd.CMD_WRITE:
                    payload = bytearray(request.length)
                    nbd.recv_into(self.conn, memoryview(payload))
                with self.cond:
                    span = (request.offset, request.offset + request.length)
                    for other, _ in self.in_flight.values():
                        if request.command == nbd.CMD_FLUSH or (
                                other.command != nbd.CMD_FLUSH and
                                other.offset < span[1] and
                                span[0] < other.offset + other.length):
                            self.overlaps.append((request, other))
                    self.arrived.append(request)
                    self.in_flight[request.handle] = (request, payload)
                    self.cond.notify_all()
        except (nbd.ClientGone, EOFError, OSError):
            pass

    def commands(self):
        with self.cond:
            return [(r.command, r.offset, r.length) for r in self.arrived]

    def release(self, offset=None, command=None):
        """Answer the request in flight at ``offset`` (or of ``command``)."""
        with self.cond:
            assert self.cond.wait_for(lambda: any(
                (offset is None or r.offset == offset) and
                (command is None or r.command == command)
                for r, _ in self.in_flight.values()), WAIT)
            handle = next(h for h, (r, _) in self.in_flight.items()
                          if (offset is None or r.offset == offset) and
                          (command is None or r.command == command))
            request, payload = self.in_flight.pop(handle)
        if payload is not None:
            self.data[request.offset:request.offset + request.length] = \
                payload
        nbd.send_reply(self.conn, handle,
                       self.errors.get(request.offset, 0))

    def release_all(self):
        while True:
            with self.cond:
                handles = list(self.in_flight)
            if not handles:
                return
            for handle in handles:
                with self.cond:
                    request, payload = self.in_flight[handle]
                self.release(request.offset, request.command)

    def close(self):
        for sock in (self.conn, self.listener):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        self.thread.join(WAIT)


class DiskWriterTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix='multidest-writer-')
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

    def start(self, size=SIZE, errors=None, disks=('vda',)):
        self.export = HeldExport(os.path.join(self.dir, 'nbd.sock'), size,
                                 errors)
        self.addCleanup(self.export.close)
        self.states = []
        self.writer = disk_writer.DiskWriter(
            {name: (os.path.join(self.dir, 'nbd.sock'), 'vda')
             for name in disks},
            name='dest', parent_dir=self.dir,
            on_state=lambda state, reason: self.states.append(state))
        self.addCleanup(self.writer.close)
        family, path = socket.AF_UNIX, self.writer.start()[len('unix:'):]
        self.stream = socket.socket(family, socket.SOCK_STREAM)
        self.stream.connect(path)
        self.addCleanup(self.stream.close)

    def send(self, *records):
        for record in records:
            self.stream.sendall(record)

    def write(self, offset, length, byte):
        return diskstream.record(diskstream.WRITE, offset, length) + \
            bytes([byte]) * length

    def test_overlapping_writes_wait_for_each_other_in_order(self):
        self.start()
        self.send(diskstream.disk_record('vda', SIZE),
                  self.write(0, 4 * KiB, 1),
                  self.write(8 * KiB, 4 * KiB, 2),
                  self.write(2 * KiB, 4 * KiB, 3),
                  self.write(64 * KiB, 4 * KiB, 4))
        self.assertTrue(wait_for(lambda: len(self.export.commands()) >= 2))
        self.export.release(8 * KiB)
        self.export.release(0)
        self.assertTrue(wait_for(lambda: len(self.export.commands()) >= 4))
        self.export.release_all()
        self.send(diskstream.record(diskstream.END))
        self.export.release(command=nbd.CMD_FLUSH)
        self.assertEqual(disk_writer.COMPLETE, self.writer.wait(WAIT))
        self.assertEqual([], self.export.overlaps)
        self.assertEqual([(nbd.CMD_WRITE, 0, 4 * KiB),
                          (nbd.CMD_WRITE, 8 * KiB, 4 * KiB),
                          (nbd.CMD_WRITE, 2 * KiB, 4 * KiB),
                          (nbd.CMD_WRITE, 64 * KiB, 4 * KiB),
                          (nbd.CMD_FLUSH, 0, 0)], self.export.commands())
        data = self.export.data
        self.assertEqual(b'\x01' * 2 * KiB, data[:2 * KiB])
        self.assertEqual(b'\x03' * 4 * KiB, data[2 * KiB:6 * KiB])
        self.assertEqual({'vda': 16 * KiB}, self.writer.progress())
        self.assertEqual([disk_writer.RECEIVING, disk_writer.COMPLETE],
                         self.states)

    def test_flush_covers_only_completed_writes(self):
        self.start()
        self.send(diskstream.disk_record('vda', SIZE),
                  self.write(0, 4 * KiB, 1),
                  self.write(16 * KiB, 4 * KiB, 2),
                  diskstream.record(diskstream.FLUSH),
                  diskstream.record(diskstream.ZERO, 32 * KiB, 8 * KiB))
        self.assertTrue(wait_for(lambda: len(self.export.commands()) >= 2))
        self.export.release(16 * KiB)
        self.export.release(0)
        self.export.release(command=nbd.CMD_FLUSH)
        self.export.release(32 * KiB)
        self.send(diskstream.record(diskstream.END))
        self.export.release(command=nbd.CMD_FLUSH)
        self.assertEqual(disk_writer.COMPLETE, self.writer.wait(WAIT))
        self.assertEqual([], self.export.overlaps)
        self.assertEqual(
            [nbd.CMD_WRITE, nbd.CMD_WRITE, nbd.CMD_FLUSH,
             nbd.CMD_WRITE_ZEROES, nbd.CMD_FLUSH],
            [command for command, _, _ in self.export.commands()])

    def test_stream_cut_before_end_is_no_copy(self):
        self.start()
        self.send(diskstream.disk_record('vda', SIZE),
                  self.write(0, 4 * KiB, 1))
        self.export.release(0)
        self.stream.shutdown(socket.SHUT_WR)
        self.assertEqual(disk_writer.FAILED, self.writer.wait(WAIT))
        self.assertIn('ended before its end record', self.writer.reason)

    def test_export_error_fails_the_copy(self):
        self.start(errors={8 * KiB: nbd.EIO})
        self.send(diskstream.disk_record('vda', SIZE),
                  self.write(8 * KiB, 4 * KiB, 1))
        self.export.release(8 * KiB)
        self.assertEqual(disk_writer.FAILED, self.writer.wait(WAIT))
        self.assertIn('errno 5', self.writer.reason)
        # The agent feeding it sees its connection go.
        self.assertEqual(b'', self.stream.recv(1))

    def test_unknown_disk_is_refused(self):
        self.start()
        self.send(diskstream.disk_record('vdz', SIZE))
        self.assertEqual(disk_writer.FAILED, self.writer.wait(WAIT))
        self.assertIn('vdz is not one this destination prepared',
                      self.writer.reason)

    def test_size_mismatch_is_refused(self):
        self.start()
        self.send(diskstream.disk_record('vda', 2 * SIZE))
        self.assertEqual(disk_writer.FAILED, self.writer.wait(WAIT))
        self.assertIn('the export has %d bytes, the source disk %d'
                      % (SIZE, 2 * SIZE), self.writer.reason)

    def test_complete_only_when_every_disk_is(self):
        self.start(disks=('vda', 'vdb'))
        self.send(diskstream.disk_record('vda', SIZE),
                  diskstream.record(diskstream.END))
        self.export.release(command=nbd.CMD_FLUSH)
        self.assertTrue(wait_for(lambda: self.writer.progress() == {
            'vda': 0}))
        self.assertEqual(disk_writer.RECEIVING, self.writer.wait(0.1))
