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
import threading

import fixtures
import testtools

from nova_multidest.dataplane import protocol
from nova_multidest.dataplane import stream_buffer
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


class TeeTest(testtools.TestCase):

    def test_second_pipe_gets_the_bytes_and_the_first_keeps_them(self):
        first = os.pipe()
        second = os.pipe()
        for fd in first + second:
            self.addCleanup(os.close, fd)
        os.write(first[1], b'pages')
        self.assertEqual(5, zerocopy.tee(first[0], second[1], 100))
        self.assertEqual(b'pages', os.read(second[0], 100))
        self.assertEqual(b'pages', os.read(first[0], 100))

    def test_empty_pipe_would_block(self):
        first = os.pipe2(os.O_NONBLOCK)
        second = os.pipe2(os.O_NONBLOCK)
        for fd in first + second:
            self.addCleanup(os.close, fd)
        self.assertRaises(BlockingIOError, zerocopy.tee, first[0],
                          second[1], 100)


class FanoutTest(testtools.TestCase):
    """Several consumers of one source, through pipes or the buffer."""

    ROUND = 64 * 1024

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.MonkeyPatch(
            'nova_multidest.dataplane.zerocopy.LANE_PIPE_BYTES',
            4 * self.ROUND))
        self.buffer = stream_buffer.StreamBuffer(
            lag_limit=64 * 2**20, window=4 * self.ROUND)
        self.upstream, self.source = socket.socketpair()
        for sock in (self.upstream, self.source):
            self.addCleanup(sock.close)

    def _fanout(self, count, store=False):
        fanout = zerocopy.Fanout(self.buffer, store=store)
        self.addCleanup(fanout.close)
        lanes = [fanout.add_lane(self.buffer.add_cursor('c%d' % i),
                                 framed=False) for i in range(count)]
        return fanout, lanes

    def _feed(self, fanout, data):
        self.upstream.sendall(data)
        fed = 0
        while fed < len(data):
            fed += fanout.feed(self.source, len(data) - fed, timeout=5)

    def _take(self, lane, size):
        """What one consumer sends, and how many bytes came by pipe."""
        out, sink = socket.socketpair()
        self.addCleanup(out.close)
        self.addCleanup(sink.close)
        got = bytearray()
        piped = 0
        while len(got) < size:
            count = lane.next()
            if count:
                lane.send(out, count, timeout=5)
                piped += count
            else:
                view = lane.clip(self.buffer.peek(lane.cursor, timeout=0))
                out.sendall(view)
                self.buffer.advance(lane.cursor, len(view))
            while True:
                try:
                    got += sink.recv(1 << 20, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
        return bytes(got), piped

    def test_every_consumer_gets_the_stream_without_a_copy(self):
        fanout, lanes = self._fanout(3)
        data = os.urandom(3 * self.ROUND)
        self._feed(fanout, data)
        for lane in lanes:
            self.assertEqual((data, len(data)), self._take(lane, len(data)))
        self.assertEqual(0, fanout.stored_bytes)
        self.assertEqual(len(data), self.buffer.head)

    def test_full_pipe_gets_copies_and_holds_nobody_back(self):
        fanout, (fast, slow) = self._fanout(2)
        rounds = [os.urandom(self.ROUND) for _ in range(6)]
        for data in rounds:
            self._feed(fanout, data)
            # Only the fast consumer sends; the slow one's pipe fills.
            self.assertEqual((data, len(data)), self._take(fast, len(data)))
        got, piped = self._take(slow, len(rounds) * self.ROUND)
        self.assertEqual(b''.join(rounds), got)
        self.assertEqual(4 * self.ROUND, piped)
        self.assertEqual(2 * self.ROUND, fanout.stored_bytes)

    def test_store_keeps_every_byte_for_a_resend(self):
        fanout, (lane,) = self._fanout(1, store=True)
        data = os.urandom(2 * self.ROUND)
        self._feed(fanout, data)
        self.assertEqual(len(data), fanout.stored_bytes)
        self.assertEqual((data, len(data)), self._take(lane, len(data)))
        # A repaired hop resumes from what it holds: the buffer resends.
        lane.reset()
        self.buffer.rewind(lane.cursor, self.ROUND)
        self.assertEqual((data[self.ROUND:], 0),
                         self._take(lane, self.ROUND))

    def test_end_and_abort_reach_the_consumers(self):
        fanout, (lane,) = self._fanout(1)
        self.buffer.finish()
        self.assertEqual(0, lane.next())
        self.assertEqual(b'', bytes(self.buffer.peek(lane.cursor)))
        self.buffer.drop(lane.cursor, 'lost the election')
        self.assertRaises(stream_buffer.CursorDropped, lane.next)
        self.assertIsNone(fanout.feed(self.source, 10, timeout=5))


class PushTest(FanoutTest):
    """The producer sends a round itself to a consumer that waits for it."""

    def _park(self, lane, sock):
        """A consumer thread waiting in next(); returns what next() gave."""
        lane.attach(sock)
        answers = []
        thread = threading.Thread(target=lambda: answers.append(lane.next()))
        thread.start()
        self.addCleanup(thread.join, 5)
        with self.buffer.condition:
            while not lane.parked:
                self.buffer.condition.wait(0.01)
        return thread, answers

    def _sockets(self):
        out, sink = socket.socketpair()
        self.addCleanup(out.close)
        self.addCleanup(sink.close)
        return out, sink

    @staticmethod
    def _recv(sock, size):
        got = bytearray()
        sock.settimeout(5)
        while len(got) < size:
            got += sock.recv(size - len(got))
        return bytes(got)

    def test_waiting_consumer_gets_the_round_without_waking(self):
        fanout, (lane,) = self._fanout(1, store=True)
        out, sink = self._sockets()
        thread, answers = self._park(lane, out)
        data = os.urandom(self.ROUND)
        self._feed(fanout, data)
        # Sent and counted by the producer; the consumer still waits.
        self.assertEqual(data, self._recv(sink, len(data)))
        self.assertEqual(len(data), lane.cursor.offset)
        self.assertTrue(thread.is_alive())
        self.assertEqual([], answers)
        self.buffer.finish()
        thread.join(5)
        self.assertEqual([0], answers)
        # A chain still keeps what it sent, for a repaired hop.
        self.assertEqual(len(data), fanout.stored_bytes)

    def test_a_framed_round_leaves_with_its_header_in_one_send(self):
        calls = []
        send = zerocopy._send

        def spy(fd, data, size, flags):
            calls.append((data, flags))
            return send(fd, data, size, flags)

        self.useFixture(fixtures.MonkeyPatch(
            'nova_multidest.dataplane.zerocopy._send', spy))
        fanout = zerocopy.Fanout(self.buffer)
        self.addCleanup(fanout.close)
        lane = fanout.add_lane(self.buffer.add_cursor('hop'), framed=True)
        out, sink = self._sockets()
        thread, answers = self._park(lane, out)
        data = os.urandom(self.ROUND)
        self._feed(fanout, data)
        header = self._recv(sink, protocol.FRAME_HEADER.size)
        self.assertEqual((protocol.FRAME_DATA, len(data)),
                         protocol.FRAME_HEADER.unpack(header))
        self.assertEqual(data, self._recv(sink, len(data)))
        # The header waits in the kernel for the payload behind it.
        self.assertEqual([(header, socket.MSG_MORE | socket.MSG_DONTWAIT)],
                         calls)
        # One count of what reached the hop, whoever sent it.
        self.assertEqual(len(data), lane.cursor.sent)
        self.assertTrue(thread.is_alive())
        self.buffer.finish()
        thread.join(5)

    def test_what_the_socket_does_not_take_is_left_to_the_consumer(self):
        fanout = zerocopy.Fanout(self.buffer)
        self.addCleanup(fanout.close)
        lane = fanout.add_lane(self.buffer.add_cursor('hop'), framed=True)
        out, sink = self._sockets()
        out.setblocking(False)
        backlog = 0
        while True:
            try:
                backlog += out.send(b'x' * 4096)
            except BlockingIOError:
                break
        out.setblocking(True)
        thread, answers = self._park(lane, out)
        data = os.urandom(self.ROUND)
        self._feed(fanout, data)
        # The socket was full: the consumer wakes to send the round.
        thread.join(5)
        self.assertEqual([len(data)], answers)
        self.assertEqual(0, lane.cursor.offset)
        sender = threading.Thread(target=lane.send,
                                  args=(out, len(data), 5))
        sender.start()
        self.assertEqual(b'x' * backlog, self._recv(sink, backlog))
        header = self._recv(sink, protocol.FRAME_HEADER.size)
        self.assertEqual((protocol.FRAME_DATA, len(data)),
                         protocol.FRAME_HEADER.unpack(header))
        self.assertEqual(data, self._recv(sink, len(data)))
        sender.join(5)
        self.assertEqual(len(data), lane.cursor.offset)

    def test_repaired_hop_resumes_from_the_buffer_after_a_push(self):
        fanout, (lane,) = self._fanout(1, store=True)
        out, sink = self._sockets()
        thread, answers = self._park(lane, out)
        data = os.urandom(2 * self.ROUND)
        self._feed(fanout, data)
        self.assertEqual(data, self._recv(sink, len(data)))
        self.buffer.abort('test over')
        thread.join(5)
        # The next hop holds only the first round: the rest is resent.
        lane.reset()
        self.buffer.rewind(lane.cursor, self.ROUND)
        self.assertEqual(bytes(data[self.ROUND:]),
                         bytes(self.buffer.peek(lane.cursor, timeout=0)))

    def test_consumer_without_a_socket_is_not_pushed_to(self):
        fanout, (lane,) = self._fanout(1)
        data = os.urandom(self.ROUND)
        self._feed(fanout, data)
        self.assertEqual(0, lane.cursor.offset)
        self.assertEqual((data, len(data)), self._take(lane, len(data)))
