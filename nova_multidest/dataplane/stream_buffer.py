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

"""One copy of a stream in memory, read at their own pace by several consumers.

A migration stream goes to several destinations that drain it at different
speeds. Copying it once per destination would multiply memory and CPU, and a
per-destination queue fed by the source would let the slowest destination
stall the source. Here the producer writes each byte once; every consumer
holds a cursor into the same chunks. The producer is held back only by the
fastest consumer (it may run ``window`` bytes ahead of it), and a consumer
that falls more than ``lag_limit`` bytes behind the fastest is dropped, so
memory stays bounded and a slow consumer never blocks the others.

Bytes that every consumer takes through a kernel pipe instead (see
zerocopy.Fanout) are counted without being stored: ``skip`` leaves a gap
that no cursor ever reads.
"""

import collections
import logging
import mmap
import threading

LOG = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 2 * 2**20
# Bytes run ahead of the consumers are bytes QEMU counts as sent, which
# overrates the bandwidth it plans with and queues ahead of the last pages
# at switch-over (protocol.SOCKET_BUFFER_BYTES says the same of sockets).
DEFAULT_WINDOW_BYTES = 2**20
_FREE_CHUNKS = 16


def allocate_chunk(size):
    """Memory for ``size`` stream bytes, its pages in place at once.

    A chain keeps what it sent for a repaired hop to resume from, so each
    byte it forwards lands in memory touched for the first time until the
    retained window is full. A bytearray zero-fills that memory in user
    space and takes a page fault for every 4 KiB of it, which together
    cost more CPU than the forwarding itself. An anonymous mapping is zero
    already, and MAP_POPULATE maps its pages in one system call.
    """
    return mmap.mmap(-1, size, flags=(mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS |
                                      getattr(mmap, 'MAP_POPULATE', 0)))


class StreamAborted(Exception):
    """The producer side failed: the stream will never be complete."""


class CursorDropped(Exception):
    """This consumer was dropped (by the lag policy or by its owner)."""


class HopLost(ConnectionAbortedError):
    """The hop this consumer sends to was declared lost (``interrupt``).

    A connection error, so the consumer handles it as one: a chain
    forwarder repairs around the hop.
    """


class Cursor(object):
    """One consumer's position; ``on_drop(cursor, reason)`` is called once.

    ``sent`` counts every byte the consumer sent, whoever moved it (its
    own thread, or a producer pushing into its pipe), resent ones too:
    ``offset`` goes back when a repaired hop resumes, ``sent`` never.
    """

    def __init__(self, name, offset, on_drop):
        self.name = name
        self.offset = offset
        self.sent = 0
        self.dropped = None
        self.on_drop = on_drop
        # Why the consumer's hop is lost: raised once at its next peek.
        self.interrupted = None

    def __repr__(self):
        return '<Cursor %s at %d%s>' % (
            self.name, self.offset, ' dropped' if self.dropped else '')


class StreamBuffer(object):
    """Shared chunks of one stream channel plus the consumers' cursors."""

    def __init__(self, lag_limit, window=DEFAULT_WINDOW_BYTES,
                 chunk_size=DEFAULT_CHUNK_BYTES, retain=0):
        self.lag_limit = lag_limit
        self.window = max(window, 1)
        self.chunk_size = chunk_size
        self.retain = retain
        self.head = 0
        self.base = 0
        self.eof = False
        self.abort_reason = None
        # [start, chunk, bytes filled]; a gap may lie between two.
        self._chunks = collections.deque()
        self._sealed = False
        self._free = []
        self._cursors = []
        self._cond = threading.Condition()
        self._pull = None
        self._pull_what = None
        self._pulling = False

    @property
    def condition(self):
        """Notified on every change of the stream or of a cursor."""
        return self._cond

    @property
    def retained_bytes(self):
        """Bytes held in memory for consumers that have not sent them."""
        with self._cond:
            return self.head - self.base

    # -- consumers -------------------------------------------------------

    def add_cursor(self, name, on_drop=None, offset=None):
        """Register a consumer at ``offset`` (default: oldest kept byte)."""
        with self._cond:
            if offset is None:
                offset = self.base
            if offset < self.base or offset > self.head:
                raise CursorDropped(
                    'offset %d is outside the retained window %d..%d'
                    % (offset, self.base, self.head))
            cursor = Cursor(name, offset, on_drop)
            self._cursors.append(cursor)
            self._cond.notify_all()
            return cursor

    def live_cursors(self):
        with self._cond:
            return list(self._cursors)

    def drop(self, cursor, reason):
        """Remove a consumer; its owner's ``on_drop`` runs outside the lock."""
        with self._cond:
            dropped = self._drop_locked(cursor, reason)
            self._trim_locked()
            self._cond.notify_all()
        if dropped and cursor.on_drop:
            cursor.on_drop(cursor, reason)

    def _drop_locked(self, cursor, reason):
        if cursor.dropped:
            return False
        cursor.dropped = reason
        if cursor in self._cursors:
            self._cursors.remove(cursor)
        return True

    def rewind(self, cursor, offset):
        """Move a consumer to ``offset``, which must still be buffered.

        A repaired chain hop resumes from what its new peer already holds.
        """
        with self._cond:
            if cursor.dropped:
                raise CursorDropped(cursor.dropped)
            if offset == cursor.offset:
                return
            if not self._stored_locked(offset):
                raise CursorDropped(
                    'the next hop holds %d bytes but only bytes %d..%d are '
                    'still buffered' % (offset, self.base, self.head))
            cursor.offset = offset
            self._cond.notify_all()

    def interrupt(self, cursor, reason):
        """Make ``cursor``'s consumer raise HopLost, waiting or not.

        An idle consumer only finds its hop gone when it next sends, and
        the hops behind that one stop waiting for a repair long before.
        """
        with self._cond:
            cursor.interrupted = reason
            self._cond.notify_all()

    def peek(self, cursor, timeout=None):
        """Wait for bytes after ``cursor``; return a view of them.

        Returns an empty view at the end of the stream and None when the
        timeout expired. Raises CursorDropped, HopLost or StreamAborted.
        In pull mode the caller reads the source itself when nothing is
        buffered.
        """
        while True:
            with self._cond:
                if cursor.dropped:
                    raise CursorDropped(cursor.dropped)
                if cursor.interrupted:
                    reason, cursor.interrupted = cursor.interrupted, None
                    raise HopLost(reason)
                if cursor.offset < self.head:
                    return self._view_locked(cursor.offset)
                if self.abort_reason:
                    raise StreamAborted(self.abort_reason)
                if self.eof:
                    return memoryview(b'')
                pull = None if self._pulling else self._pull
                if pull is None:
                    if not self._cond.wait(timeout):
                        return None
                    continue
                self._pulling = True
            try:
                self._pull_once(pull)
            finally:
                with self._cond:
                    self._pulling = False
                    self._cond.notify_all()

    def set_pull(self, pull, what='source connection'):
        """Let consumers read the source in their own thread.

        With one consumer, handing every chunk from a reader thread to the
        consumer's thread costs as much CPU as copying it; the consumer
        calls ``pull(view)`` (bytes read into view, 0 at the end, OSError
        on failure) whenever it has caught up with the source.
        """
        with self._cond:
            self._pull = pull
            self._pull_what = what
            self._cond.notify_all()

    def _pull_once(self, pull):
        view = self.writable()
        if view is None:
            return
        try:
            count = pull(view)
        except OSError as exc:
            self.abort('%s failed: %s' % (self._pull_what, exc))
            return
        if count:
            self.publish(count)
        else:
            self.finish()

    def _stored_locked(self, offset):
        """Whether every byte from ``offset`` to the head is in memory."""
        if offset < self.base or offset > self.head:
            return False
        for start, _, filled in self._chunks:
            if start + filled <= offset:
                continue
            if start > offset:
                return False
            offset = start + filled
        return offset == self.head

    def _view_locked(self, offset):
        for start, chunk, filled in self._chunks:
            if start <= offset < start + filled:
                return memoryview(chunk)[offset - start:filled]
        raise AssertionError('offset %d not retained (base %d, head %d)'
                             % (offset, self.base, self.head))

    def caught_up(self, cursor):
        """True if this consumer has every byte the buffer holds."""
        with self._cond:
            return cursor.offset == self.head

    def pass_through(self, cursor, count):
        """Count bytes that went from the source to this consumer directly.

        A lone consumer that is caught up may move the source's bytes
        itself without buffering them (zero-copy); the buffer still
        counts them, so progress and the end of the stream stay right.
        """
        with self._cond:
            cursor.sent += count
            if cursor.dropped:
                return
            self.head += count
            self._sealed = True
            cursor.offset += count
            self._trim_locked()
            self._cond.notify_all()

    def advance(self, cursor, count, notify=True):
        """Record that ``count`` more bytes reached the consumer.

        ``notify=False`` is for a producer that sent them itself: nobody
        waits for that, and waking every thread on the stream for each
        round costs more CPU than moving the round (a drop still wakes).
        """
        laggards = []
        with self._cond:
            cursor.sent += count
            if cursor.dropped:
                return
            cursor.offset += count
            laggards = self._check_lag_locked()
            self._trim_locked()
            if notify or laggards:
                self._cond.notify_all()
        self._notify_dropped(laggards)

    def _check_lag_locked(self):
        if len(self._cursors) < 2:
            return []
        fastest = max(c.offset for c in self._cursors)
        laggards = []
        for cursor in list(self._cursors):
            behind = fastest - cursor.offset
            if behind > self.lag_limit:
                reason = ('fell %d bytes behind the fastest destination '
                          '(lag limit %d)' % (behind, self.lag_limit))
                self._drop_locked(cursor, reason)
                laggards.append((cursor, reason))
        return laggards

    def _notify_dropped(self, laggards):
        for cursor, reason in laggards:
            LOG.warning("Dropping stream consumer %s: %s", cursor.name,
                        reason)
            if cursor.on_drop:
                cursor.on_drop(cursor, reason)

    def _trim_locked(self):
        keep_from = self.head - self.retain
        if self._cursors:
            keep_from = min(keep_from,
                            min(c.offset for c in self._cursors))
        while self._chunks:
            start, chunk, filled = self._chunks[0]
            if start + filled > keep_from or self._writing_locked(0):
                break
            end = start + filled
            self._chunks.popleft()
            self.base = end
            if len(self._free) < _FREE_CHUNKS:
                self._free.append(chunk)
        if not self._chunks:
            self.base = self.head

    # -- producer --------------------------------------------------------

    def writable(self, timeout=None, paced=True):
        """Wait until the producer may write; return a view to fill.

        Returns None if no consumer is left (nobody to deliver to), if the
        stream was aborted, or on timeout; the producer then stops. A
        producer that keeps to the window itself passes ``paced=False``.
        """
        with self._cond:
            while True:
                if not self._cursors or self.abort_reason:
                    return None
                if not paced:
                    break
                fastest = max(c.offset for c in self._cursors)
                if self.head - fastest < self.window:
                    break
                if not self._cond.wait(timeout):
                    return None
            if self._writing_locked(-1):
                _, chunk, filled = self._chunks[-1]
                return memoryview(chunk)[filled:]
            chunk = (self._free.pop() if self._free
                     else allocate_chunk(self.chunk_size))
            self._chunks.append([self.head, chunk, 0])
            self._sealed = False
            return memoryview(chunk)

    def _writing_locked(self, index):
        """Whether chunk ``index`` is the one the producer writes into."""
        if not self._chunks or self._sealed:
            return False
        if index == 0 and len(self._chunks) > 1:
            return False
        _, chunk, filled = self._chunks[-1]
        return filled < len(chunk)

    def publish(self, count, notify=True):
        """Make ``count`` bytes just written into the writable view visible.

        ``notify=False``: the caller wakes the consumers itself (see
        advance).
        """
        with self._cond:
            self._chunks[-1][2] += count
            self.head += count
            laggards = self._check_lag_locked()
            if notify or laggards:
                self._cond.notify_all()
        self._notify_dropped(laggards)

    def skip(self, count, notify=True):
        """Count ``count`` bytes that no consumer will read from memory.

        Every consumer gets them another way (through a kernel pipe), so
        they advance the stream without being stored. ``notify``: as for
        publish.
        """
        with self._cond:
            self.head += count
            self._sealed = True
            laggards = self._check_lag_locked()
            self._trim_locked()
            if notify or laggards:
                self._cond.notify_all()
        self._notify_dropped(laggards)

    def finish(self):
        """The producer reached the end of the stream."""
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    def abort(self, reason):
        """The producer failed; consumers get StreamAborted."""
        with self._cond:
            if not self.eof and not self.abort_reason:
                self.abort_reason = reason
            self._cond.notify_all()

    def wait_drained(self, timeout=None):
        """Wait until every live consumer reached the end of the stream."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self.abort_reason or (self.eof and all(
                    c.offset >= self.head for c in self._cursors)),
                timeout)
