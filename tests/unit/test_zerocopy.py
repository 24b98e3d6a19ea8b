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

"""The splice pipe that moves stream bytes between sockets."""

import errno
import os
import socket

import fixtures
import testtools

from nova_multidest.dataplane import zerocopy


class SplicerTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.splicer = zerocopy.Splicer()
        self.addCleanup(self.splicer.close)
        self.upstream, self.source = self._pair()
        self.target, self.downstream = self._pair()

    def _pair(self):
        pair = socket.socketpair()
        for sock in pair:
            self.addCleanup(sock.close)
        return pair

    def _move(self, data):
        self.upstream.sendall(data)
        count = self.splicer.fill(self.source, len(data), timeout=5)
        self.splicer.drain(self.target, count, timeout=5)
        return count, self.downstream.recv(len(data))

    def test_bytes_go_through_and_the_end_shows(self):
        count, received = self._move(b'migration stream')
        self.assertEqual(len(b'migration stream'), count)
        self.assertEqual(b'migration stream', received)
        self.upstream.shutdown(socket.SHUT_WR)
        self.assertEqual(0, self.splicer.fill(self.source, 100, timeout=5))

    def test_fill_is_bounded_by_the_pipe(self):
        self.upstream.setblocking(False)
        sent = 0
        try:
            while sent < 4 * self.splicer.capacity:
                sent += self.upstream.send(b'x' * 65536)
        except BlockingIOError:
            pass
        count = self.splicer.fill(self.source, sent, timeout=5)
        self.assertLessEqual(count, self.splicer.capacity)
        self.assertGreater(count, 0)

    def test_idle_socket_times_out(self):
        self.assertRaises(TimeoutError, self.splicer.fill, self.source, 10,
                          timeout=0.01)

    def test_unspliceable_source_moves_nothing(self):
        self.useFixture(fixtures.MonkeyPatch(
            'nova_multidest.dataplane.zerocopy.os.splice',
            self._refuse(lambda fd_in, fd_out: True)))
        self.upstream.sendall(b'abc')
        self.assertRaises(zerocopy.SpliceUnsupported, self.splicer.fill,
                          self.source, 3, timeout=5)
        self.assertEqual(b'abc', self.source.recv(3))

    def test_unspliceable_target_gets_the_bytes_by_copy(self):
        target_fd = self.target.fileno()
        self.useFixture(fixtures.MonkeyPatch(
            'nova_multidest.dataplane.zerocopy.os.splice',
            self._refuse(lambda fd_in, fd_out: fd_out == target_fd)))
        self.assertEqual((5, b'first'), self._move(b'first'))
        self.assertEqual((6, b'second'), self._move(b'second'))

    @staticmethod
    def _refuse(refused):
        splice = os.splice

        def fake_splice(fd_in, fd_out, count, **kwargs):
            if refused(fd_in, fd_out):
                raise OSError(errno.EINVAL, 'Invalid argument')
            return splice(fd_in, fd_out, count, **kwargs)
        return fake_splice
