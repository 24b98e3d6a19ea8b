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

"""Both sides of nbd.py against QEMU's own NBD implementation.

Our client talks to ``qemu-nbd``; our server is talked to by ``qemu-io``
and ``qemu-img``, which use the same NBD client as QEMU's mirror jobs.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import testtools

from nova_multidest.dataplane import nbd
from nova_multidest.dataplane import qemu
from nova_multidest import exceptions

MiB = 1 << 20
KiB = 1 << 10
SIZE = 16 * MiB


def qemu_io(image, *commands, fmt='qcow2'):
    # Write-back, so that only the writes asked for carry FUA.
    argv = ['qemu-io', '-f', fmt, '-t', 'writeback']
    for command in commands:
        argv += ['-c', command]
    return subprocess.run(argv + [image], capture_output=True, text=True,
                          timeout=60)


class TestClientAgainstQemuNbd(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix='multidest-nbd-')
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.image = os.path.join(self.dir, 'disk.qcow2')
        qemu.create_image(self.image, SIZE)
        qemu_io(self.image, 'write -P 0x11 0 4M')
        self.path = os.path.join(self.dir, 'nbd.sock')
        self.server = subprocess.Popen(
            ['qemu-nbd', '--persistent', '--socket', self.path,
             '--export-name', 'vda', '--format', 'qcow2', self.image],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.addCleanup(self._stop_server)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.path):
            self.assertIsNone(self.server.poll(), 'qemu-nbd did not start')
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)

    def _stop_server(self):
        if self.server.poll() is None:
            os.kill(self.server.pid, signal.SIGTERM)
        try:
            self.server.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(self.server.pid, signal.SIGKILL)
            self.server.wait()
        self.server.stderr.close()

    def _connect(self):
        client = self._wait_connect()
        self.addCleanup(client.disconnect)
        return client

    def _wait_connect(self):
        deadline = time.monotonic() + 10
        while True:
            try:
                return nbd.Client.connect(self.path, 'vda')
            except exceptions.NBDError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def test_negotiates_size_and_flags(self):
        client = self._connect()
        self.assertEqual(SIZE, client.size)
        for flag in (nbd.TRANS_SEND_FLUSH, nbd.TRANS_SEND_TRIM,
                     nbd.TRANS_SEND_WRITE_ZEROES, nbd.TRANS_SEND_FUA):
            self.assertTrue(client.flags & flag, 'flag %#x missing' % flag)
        self.assertEqual(b'\x11' * 4096, client.read(0, 4096))

    def test_pipelined_writes_zeroes_trim_and_flush(self):
        client = self._connect()
        requests = [
            (1, nbd.CMD_WRITE, 1 * MiB, 64 * KiB, 0, b'\x22' * 64 * KiB),
            (2, nbd.CMD_WRITE, 5 * MiB, 1 * MiB, nbd.CMD_FLAG_FUA,
             b'\x33' * MiB),
            (3, nbd.CMD_WRITE_ZEROES, 2 * MiB, 512 * KiB, 0, None),
            (4, nbd.CMD_TRIM, 8 * MiB, 1 * MiB, 0, None),
        ]
        for handle, command, offset, length, flags, payload in requests:
            client.send_request(command, handle, offset, length, flags,
                                payload)
        replies = dict(client.read_reply() for _ in requests)
        self.assertEqual({1: 0, 2: 0, 3: 0, 4: 0}, replies)
        client.send_request(nbd.CMD_FLUSH, 5)
        self.assertEqual((5, 0), client.read_reply())
        self.assertEqual(b'\x33' * 4096, client.read(5 * MiB, 4096))
        client.disconnect()
        self._stop_server()
        result = qemu_io(self.image, 'read -P 0x22 1M 64k',
                         'read -P 0x33 5M 1M', 'read -P 0 2M 512k',
                         'read -P 0x11 0 1M', 'read -P 0x11 3M 1M')
        self.assertNotIn('failed', result.stdout + result.stderr)
        self.assertEqual(0, result.returncode, result.stderr)

    def test_error_reply_names_the_request(self):
        client = self._connect()
        client.send_request(nbd.CMD_WRITE, 9, SIZE, 4096,
                            payload=b'x' * 4096)
        handle, error = client.read_reply()
        self.assertEqual(9, handle)
        self.assertNotEqual(0, error)

    def test_unknown_export_is_refused(self):
        self._wait_connect().disconnect()
        error = self.assertRaises(exceptions.NBDError, nbd.Client.connect,
                                  self.path, 'vdb')
        self.assertIn('export refused', str(error))

    def test_nothing_listening(self):
        error = self.assertRaises(exceptions.NBDError, nbd.Client.connect,
                                  os.path.join(self.dir, 'none.sock'), 'vda')
        self.assertIn('cannot connect', str(error))


class RecordingServer(object):
    """Our server side, answering every request, recording what came."""

    def __init__(self, path, export, size, flags):
        self.requests = []
        self.error = None
        self.ended = None
        # Set once a connection ended, with ``ended`` saying how.
        self.connection_ended = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(4)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        args=(export, size, flags))
        self._thread.start()

    def _run(self, export, size, flags):
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with sock:
                self._serve(sock, export, size, flags)

    def _serve(self, sock, export, size, flags):
        try:
            nbd.serve_handshake(sock, export, size, flags)
            while True:
                request = nbd.read_request(sock)
                payload = b''
                if request.command == nbd.CMD_WRITE:
                    data = bytearray(request.length)
                    nbd.recv_into(sock, memoryview(data))
                    payload = bytes(data)
                self.requests.append((request, payload))
                error = 0 if request.command != nbd.CMD_READ else nbd.EINVAL
                nbd.send_reply(sock, request.handle, error)
        except nbd.ClientGone:
            self.ended = 'disconnected'
        except (exceptions.NBDError, EOFError, OSError) as exc:
            self.ended = str(exc)
        finally:
            self.connection_ended.set()

    def close(self):
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(10)


class TestServerAgainstQemuClients(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix='multidest-nbd-')
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.path = os.path.join(self.dir, 'relay.sock')
        flags = (nbd.TRANS_HAS_FLAGS | nbd.TRANS_SEND_FLUSH |
                 nbd.TRANS_SEND_FUA | nbd.TRANS_SEND_TRIM |
                 nbd.TRANS_SEND_WRITE_ZEROES)
        self.server = RecordingServer(self.path, 'vda', SIZE, flags)
        self.addCleanup(self.server.close)

    def _uri(self, export='vda'):
        return 'nbd+unix:///%s?socket=%s' % (export, self.path)

    def test_qemu_img_sees_the_export(self):
        info = subprocess.run(
            ['qemu-img', 'info', '--output=json', '-f', 'raw', self._uri()],
            capture_output=True, text=True, timeout=60, check=True)
        self.assertIn('"virtual-size": %d' % SIZE, info.stdout)

    def test_qemu_io_requests_arrive_in_order(self):
        result = qemu_io(self._uri(), 'write -P 0x5 0 64k',
                         'write -z 64k 128k', 'discard 1M 64k',
                         'write -f -P 0x6 2M 4k', 'flush', fmt='raw')
        self.assertEqual(0, result.returncode, result.stderr)
        seen = [(r.command, r.offset, r.length, r.flags & nbd.CMD_FLAG_FUA)
                for r, _ in self.server.requests]
        self.assertEqual([(nbd.CMD_WRITE, 0, 64 * KiB, 0),
                          (nbd.CMD_WRITE_ZEROES, 64 * KiB, 128 * KiB, 0),
                          (nbd.CMD_TRIM, MiB, 64 * KiB, 0),
                          (nbd.CMD_WRITE, 2 * MiB, 4 * KiB,
                           nbd.CMD_FLAG_FUA),
                          (nbd.CMD_FLUSH, 0, 0, 0)], seen[:5])
        # qemu-io flushes once more as it closes the image.
        self.assertEqual([(nbd.CMD_FLUSH, 0, 0, 0)], seen[5:])
        self.assertEqual(b'\x05' * 64 * KiB, self.server.requests[0][1])
        self.assertEqual(b'\x06' * 4 * KiB, self.server.requests[3][1])
        # qemu-io may exit before the server read its disconnect request.
        self.assertTrue(self.server.connection_ended.wait(30))
        self.assertEqual('disconnected', self.server.ended)

    def test_other_export_names_are_refused(self):
        result = qemu_io(self._uri('vdb'), 'write 0 4k', fmt='raw')
        self.assertNotEqual(0, result.returncode)
        self.assertIn('export', result.stdout + result.stderr)
        self.assertEqual([], self.server.requests)

    def test_write_beyond_the_end_is_refused_by_the_client(self):
        result = qemu_io(self._uri(), 'write %d 4k' % SIZE, fmt='raw')
        self.assertIn('Input/output error', result.stdout + result.stderr)
        self.assertEqual([], [r for r, _ in self.server.requests
                              if r.command != nbd.CMD_FLUSH])
