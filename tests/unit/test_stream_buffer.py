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

"""The shared stream buffer: back-pressure, lag policy, bounded memory."""

import logging

import fixtures
import testtools

from nova_multidest.dataplane import stream_buffer

KiB = 1024


def produce(buffer, data):
    """Write ``data`` as far as the buffer lets the producer go."""
    written = 0
    while written < len(data):
        view = buffer.writable(timeout=0)
        if view is None:
            break
        n = min(len(view), len(data) - written)
        view[:n] = data[written:written + n]
        buffer.publish(n)
        written += n
    return written


def consume(buffer, cursor, limit):
    """Read up to ``limit`` bytes for one consumer."""
    out = bytearray()
    while len(out) < limit:
        view = buffer.peek(cursor, timeout=0)
        if not view:
            break
        n = min(len(view), limit - len(out))
        out += view[:n]
        buffer.advance(cursor, n)
    return bytes(out)


class StreamBufferTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.FakeLogger(level=logging.DEBUG))

    def make(self, lag_limit=64 * KiB, window=16 * KiB, chunk=4 * KiB,
             retain=0):
        self.dropped = []
        buffer = stream_buffer.StreamBuffer(lag_limit, window=window,
                                            chunk_size=chunk, retain=retain)
        return buffer

    def on_drop(self, cursor, reason):
        self.dropped.append((cursor.name, reason))

    def test_every_consumer_reads_the_same_bytes(self):
        buffer = self.make()
        first = buffer.add_cursor('first')
        second = buffer.add_cursor('second')
        data = bytes(range(256)) * 40
        got = {first: b'', second: b''}
        written = 0
        while written < len(data) or any(
                c.offset < len(data) for c in got):
            written += produce(buffer, data[written:])
            for cursor in got:
                got[cursor] += consume(buffer, cursor, 3 * KiB)
        buffer.finish()
        self.assertEqual(data, got[first])
        self.assertEqual(data, got[second])
        self.assertEqual(b'', bytes(buffer.peek(first)))

    def test_producer_is_held_back_by_the_fastest_consumer_only(self):
        buffer = self.make(window=16 * KiB)
        fast = buffer.add_cursor('fast')
        buffer.add_cursor('idle')
        data = b'x' * (64 * KiB)
        self.assertEqual(16 * KiB, produce(buffer, data))
        consume(buffer, fast, 8 * KiB)
        # The idle consumer does not hold the producer back.
        self.assertEqual(8 * KiB, produce(buffer, data))

    def test_laggard_is_dropped_and_memory_stays_bounded(self):
        buffer = self.make(lag_limit=32 * KiB, window=8 * KiB)
        fast = buffer.add_cursor('fast', on_drop=self.on_drop)
        slow = buffer.add_cursor('slow', on_drop=self.on_drop)
        chunk = b'y' * KiB
        peak = 0
        for _ in range(200):
            produce(buffer, chunk)
            consume(buffer, fast, KiB)
            peak = max(peak, buffer.retained_bytes)
        self.assertEqual(1, len(self.dropped))
        self.assertEqual('slow', self.dropped[0][0])
        self.assertIn('lag limit 32768', self.dropped[0][1])
        self.assertIsNotNone(slow.dropped)
        self.assertRaises(stream_buffer.CursorDropped, buffer.peek, slow)
        # lag_limit + window + one chunk of slack, never the whole stream.
        self.assertLessEqual(peak, 32 * KiB + 8 * KiB + 4 * KiB)
        self.assertLessEqual(buffer.retained_bytes, 8 * KiB + 4 * KiB)

    def test_no_consumer_stops_the_producer(self):
        buffer = self.make()
        cursor = buffer.add_cursor('only', on_drop=self.on_drop)
        buffer.drop(cursor, 'gone')
        self.assertIsNone(buffer.writable(timeout=0))
        self.assertEqual([('only', 'gone')], self.dropped)

    def test_abort_reaches_consumers(self):
        buffer = self.make()
        cursor = buffer.add_cursor('c')
        produce(buffer, b'z' * 10)
        consume(buffer, cursor, 10)
        buffer.abort('source died')
        exc = self.assertRaises(stream_buffer.StreamAborted, buffer.peek,
                                cursor)
        self.assertIn('source died', str(exc))
        self.assertIsNone(buffer.writable(timeout=0))

    def test_rewind_within_retained_window(self):
        buffer = self.make(lag_limit=64 * KiB, retain=16 * KiB)
        cursor = buffer.add_cursor('hop')
        data = bytes(range(256)) * 256
        sent = b''
        written = 0
        while written < len(data):
            written += produce(buffer, data[written:])
            sent += consume(buffer, cursor, len(data))
        self.assertEqual(data, sent)
        buffer.rewind(cursor, len(data) - 12 * KiB)
        self.assertEqual(data[-12 * KiB:], consume(buffer, cursor, len(data)))
        # What went out twice counts twice: bytes sent, not the position.
        self.assertEqual(len(data), cursor.offset)
        self.assertEqual(len(data) + 12 * KiB, cursor.sent)
        exc = self.assertRaises(stream_buffer.CursorDropped, buffer.rewind,
                                cursor, 0)
        self.assertIn('still buffered', str(exc))

    def test_pull_mode_reads_the_source_in_the_consumer(self):
        buffer = self.make(chunk=4 * KiB)
        cursor = buffer.add_cursor('only')
        source = [b'abc' * 1000, b'def' * 2000, b'']
        pulls = []

        def pull(view):
            data = source[0][:len(view)]
            source[0] = source[0][len(data):]
            if not source[0]:
                source.pop(0)
            pulls.append(len(data))
            view[:len(data)] = data
            return len(data)

        buffer.set_pull(pull)
        got = bytearray()
        while True:
            view = buffer.peek(cursor)
            if not len(view):
                break
            got += view
            buffer.advance(cursor, len(view))
        self.assertEqual(b'abc' * 1000 + b'def' * 2000, bytes(got))
        self.assertTrue(buffer.eof)
        self.assertEqual(0, pulls[-1])

    def test_pull_failure_aborts_the_stream(self):
        buffer = self.make()
        cursor = buffer.add_cursor('only')

        def pull(view):
            raise ConnectionResetError('source reset')

        buffer.set_pull(pull)
        exc = self.assertRaises(stream_buffer.StreamAborted, buffer.peek,
                                cursor)
        self.assertIn('source connection failed: source reset', str(exc))

    def test_skipped_bytes_count_but_are_not_kept(self):
        buffer = self.make(chunk=4 * KiB, retain=16 * KiB)
        piped = buffer.add_cursor('piped')
        copied = buffer.add_cursor('copied')
        produce(buffer, b'a' * KiB)
        buffer.skip(2 * KiB)
        produce(buffer, b'b' * KiB)
        self.assertEqual(4 * KiB, buffer.head)
        # The copying consumer reads what was kept, never the gap.
        self.assertEqual(b'a' * KiB, bytes(buffer.peek(copied, timeout=0)))
        buffer.advance(copied, 3 * KiB)
        self.assertEqual(b'b' * KiB, bytes(buffer.peek(copied, timeout=0)))
        buffer.advance(piped, 4 * KiB)
        # A hop cannot resume from inside the gap, only after it.
        self.assertRaises(stream_buffer.CursorDropped, buffer.rewind, piped,
                          2 * KiB)
        buffer.rewind(piped, 3 * KiB)
        self.assertEqual(b'b' * KiB, bytes(buffer.peek(piped, timeout=0)))

    def test_skipping_past_the_lag_limit_drops_the_laggard(self):
        buffer = self.make(lag_limit=8 * KiB)
        fast = buffer.add_cursor('fast', on_drop=self.on_drop)
        buffer.add_cursor('slow', on_drop=self.on_drop)
        buffer.skip(9 * KiB)
        buffer.advance(fast, 9 * KiB)
        self.assertEqual(['slow'], [name for name, _ in self.dropped])
