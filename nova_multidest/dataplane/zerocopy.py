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

"""Move stream bytes from one socket to others inside the kernel.

Most of the relay's and agents' CPU goes into copying every byte of the
migration stream into Python and back out to the next socket. When one
socket's bytes go to exactly one other socket, splice(2) through a pipe
moves them between the two without that copy; when they go to several
(a star, or a chain hop that feeds its own QEMU and the next hop),
tee(2) gives every consumer its own pipe holding the same pages
(Fanout). Sockets that cannot be spliced (TLS lives in Python; some
kernels lack a socket type) keep the copying path: callers fall back on
SpliceUnsupported.
"""

import collections
import ctypes
import errno
import fcntl
import logging
import os
import select
import socket

from nova_multidest.dataplane import protocol
from nova_multidest.dataplane import stream_buffer

LOG = logging.getLogger(__name__)

SUPPORTED = hasattr(os, 'splice') and hasattr(fcntl, 'F_SETPIPE_SZ')
PIPE_BYTES = 2**20
# A consumer's pipe holds a few rounds so that it never waits for the
# producer's next one; above the unprivileged pipe-max-size only a
# privileged process gets it, the others get PIPE_BYTES.
LANE_PIPE_BYTES = 4 * 2**20
ROUNDS_PER_LANE = 4
MIN_ROUND_BYTES = 64 * 2**10
_FLAGS = (getattr(os, 'SPLICE_F_MOVE', 0) |
          getattr(os, 'SPLICE_F_NONBLOCK', 0))
_NONBLOCK = getattr(os, 'SPLICE_F_NONBLOCK', 0)


def _load(name, argtypes):
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_ssize_t
    return function


_tee = _load('tee', (ctypes.c_int, ctypes.c_int, ctypes.c_size_t,
                     ctypes.c_uint))
_send = _load('send', (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t,
                       ctypes.c_int))
TEE_SUPPORTED = SUPPORTED and _tee is not None and _send is not None
_MSG_MORE = getattr(socket, 'MSG_MORE', 0)
_MSG_DONTWAIT = getattr(socket, 'MSG_DONTWAIT', 0)


def tee(read_fd, write_fd, count):
    """Duplicate up to ``count`` bytes at the head of one pipe into another.

    Python has no wrapper for tee(2), so this calls libc's through ctypes
    (which releases the GIL for the call, as for any foreign function).
    The second pipe then references the same pages: nothing is copied and
    the first pipe keeps its bytes. Never blocks; BlockingIOError when the
    second pipe is full or the first one empty.
    """
    return _checked(_tee(read_fd, write_fd, count, _NONBLOCK))


def send_more(fd, data):
    """Send the start of ``data`` to socket ``fd``, more to follow at once.

    A frame header goes out with MSG_MORE, so that the kernel sends it in
    one segment with the payload spliced right after it, not alone.
    Never blocks (BlockingIOError when the socket takes nothing), whatever
    the timeout of the Python socket owning ``fd``. Returns the count sent.
    """
    return _checked(_send(fd, bytes(data), len(data),
                          _MSG_MORE | _MSG_DONTWAIT))


def _checked(count):
    if count < 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return count


def _new_pipe(size):
    """A non-blocking pipe of about ``size`` bytes, and its capacity."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    for attempt in (size, PIPE_BYTES):
        try:
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, attempt)
            break
        except OSError:
            continue
    return read_fd, write_fd, fcntl.fcntl(write_fd, fcntl.F_GETPIPE_SZ)


def _close_fds(*fds):
    for fd in fds:
        if fd >= 0:
            os.close(fd)


class SpliceUnsupported(Exception):
    """These descriptors cannot be spliced; no byte was moved."""


def _wait(fd, events, timeout):
    poller = select.poll()
    poller.register(fd, events)
    if not poller.poll(None if timeout is None else timeout * 1000):
        raise TimeoutError('timed out')


class Splicer(object):
    """A pipe that carries bytes from a socket to another socket.

    ``fill`` takes bytes from one socket into the pipe, ``drain`` passes
    them on; a caller drains all it filled before filling again, so the
    pipe never holds more than one chunk. Both wait at most ``timeout``
    seconds (None: for ever) for their socket, then raise TimeoutError, as
    a socket with that timeout would.
    """

    def __init__(self):
        if not SUPPORTED:
            raise SpliceUnsupported('os.splice is not available')
        self._read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC |
                                                 os.O_NONBLOCK)
        try:
            fcntl.fcntl(self._write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass
        self.capacity = fcntl.fcntl(self._write_fd, fcntl.F_GETPIPE_SZ)
        self._copying = False

    def close(self):
        fds = (self._read_fd, self._write_fd)
        self._read_fd = self._write_fd = -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def fill(self, sock, limit, timeout=None):
        """Take up to ``limit`` bytes from ``sock``; 0 at its end."""
        limit = min(limit, self.capacity)
        fd = sock.fileno()
        while True:
            try:
                return os.splice(fd, self._write_fd, limit, flags=_FLAGS)
            except BlockingIOError:
                _wait(fd, select.POLLIN, timeout)
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    raise SpliceUnsupported(str(exc))
                raise

    def drain(self, sock, count, timeout=None):
        """Pass ``count`` bytes taken by fill() on to ``sock``."""
        fd = sock.fileno()
        while count:
            if self._copying:
                count -= self._copy_out(sock, count, timeout)
                continue
            try:
                count -= os.splice(self._read_fd, fd, count, flags=_FLAGS)
            except BlockingIOError:
                _wait(fd, select.POLLOUT, timeout)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # This socket takes no spliced pages: the bytes already
                # in the pipe leave it by copy, and so do the next ones.
                self._copying = True

    def _copy_out(self, sock, count, timeout):
        data = os.read(self._read_fd, min(count, self.capacity))
        sock.sendall(data)
        return len(data)


def _splice_out(read_fd, sock, count, timeout):
    """Send ``count`` bytes waiting in a pipe to ``sock``.

    splice(2) into a blocking socket sleeps holding the pipe's lock, and
    the producer's tee(2) into that pipe would sleep with it: the socket
    is made non-blocking for the call.
    """
    fd = sock.fileno()
    blocking = os.get_blocking(fd)
    if blocking:
        os.set_blocking(fd, False)
    try:
        while count:
            try:
                count -= os.splice(read_fd, fd, count, flags=_FLAGS)
            except BlockingIOError:
                _wait(fd, select.POLLOUT, timeout)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                break
    finally:
        if blocking:
            os.set_blocking(fd, True)
    # This socket takes no spliced pages: copy what is left.
    while count:
        data = os.read(read_fd, min(count, PIPE_BYTES))
        sock.sendall(data)
        count -= len(data)


class Fanout(object):
    """Hands one stream to several consumers through kernel pipes.

    The producer splices a round of the source into a pipe, tee(2)s it
    into every consumer's own pipe and moves it into the last one; each
    consumer splices its pipe to its socket. No byte enters Python unless
    the buffer must hold it: with ``store`` (a chain keeps what it sent
    for a repaired hop to resume from) every round is also read into the
    StreamBuffer, which is one copy instead of three.

    The producer also sends each round on to the consumers itself when
    their sockets take it at once (Lane.push), so that a consumer's thread
    only wakes when its socket is full: handing every round from one
    thread to another costs more CPU than moving it.

    The StreamBuffer keeps the books: its head counts every byte, each
    consumer's cursor advances when its pipe has sent a round, so the lag
    policy, drops and progress work as for copied bytes. A consumer whose
    pipe is full while another has nothing left to send gets that round
    from the buffer instead (a copy), so it never holds the others back,
    and is dropped as usual past the lag limit.
    """

    def __init__(self, buffer, store=False):
        if not TEE_SUPPORTED:
            raise SpliceUnsupported('tee(2) is not available')
        self._buffer = buffer
        self._cond = buffer.condition
        self.store = store
        self._lane_bytes = max(min(LANE_PIPE_BYTES, buffer.window),
                               MIN_ROUND_BYTES * ROUNDS_PER_LANE)
        self._read_fd = self._write_fd = -1
        self.round_bytes = None
        self.abandoned = False
        self.stored_bytes = 0
        self._lanes = []

    def add_lane(self, cursor, framed):
        """A pipe for the consumer owning ``cursor``; see Lane."""
        lane = Lane(self, cursor, framed, self._lane_bytes)
        with self._cond:
            if self.round_bytes is None:
                self.round_bytes = max(
                    MIN_ROUND_BYTES, lane.capacity // ROUNDS_PER_LANE)
            lane.rounds = max(1, lane.capacity // self.round_bytes)
            self._lanes.append(lane)
        return lane

    def abandon(self):
        """The source cannot be spliced: the producer stores every byte.

        Consumers send what their pipes hold, then read the buffer.
        """
        with self._cond:
            self.abandoned = True
            self._cond.notify_all()

    def close_source(self):
        """The producer is done for good: free the round pipe."""
        with self._cond:
            fds = (self._read_fd, self._write_fd)
            self._read_fd = self._write_fd = -1
        _close_fds(*fds)

    def close(self):
        """Free every pipe, once nothing feeds or drains them any more."""
        self.close_source()
        with self._cond:
            lanes = list(self._lanes)
        for lane in lanes:
            lane.close()

    # -- producer --------------------------------------------------------

    def _live_locked(self):
        return [lane for lane in self._lanes
                if not lane.closed and not lane.cursor.dropped]

    def _ready_locked(self):
        """Whether a round may go out now.

        It waits for every consumer's pipe to have room, unless one
        consumer has nothing left to send: that one must not wait for the
        others, which get the round by copy.
        """
        buffer = self._buffer
        live = self._live_locked()
        if not live or buffer.abort_reason:
            return True
        if all(lane.has_room_locked() for lane in live):
            if not self.store:
                return True
        elif not any(lane.idle_locked() for lane in live):
            return False
        fastest = max(lane.cursor.offset for lane in live)
        return buffer.head - fastest < buffer.window

    def feed(self, source, limit, timeout=None):
        """Move up to ``limit`` bytes of ``source`` to every consumer.

        Returns the count, 0 at the end of ``source`` and None when nobody
        is left to deliver to. Raises SpliceUnsupported (nothing moved)
        when ``source`` cannot be spliced, TimeoutError when it sent
        nothing for ``timeout`` seconds, OSError when it failed.
        """
        with self._cond:
            self._cond.wait_for(self._ready_locked)
            if not self._live_locked() or self._buffer.abort_reason:
                return None
            if self._read_fd < 0:
                self._read_fd, self._write_fd, capacity = _new_pipe(
                    self.round_bytes or PIPE_BYTES)
                self.round_bytes = min(self.round_bytes or capacity,
                                       capacity)
        fd = source.fileno()
        limit = min(limit, self.round_bytes)
        while True:
            try:
                count = os.splice(fd, self._write_fd, limit, flags=_FLAGS)
                break
            except BlockingIOError:
                _wait(fd, select.POLLIN, timeout)
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    raise SpliceUnsupported(str(exc))
                raise
        if count:
            self._distribute(count)
        return count

    def _distribute(self, count):
        buffer = self._buffer
        with self._cond:
            self._cond.wait_for(self._ready_locked)
            live = self._live_locked()
            start = buffer.head
            piped = [lane for lane in live if lane.has_room_locked()]
            for lane in live:
                lane.busy = True
            generations = {lane: lane.generation for lane in live}
        got = {}
        moved = 0
        store = self.store or len(piped) < len(live)
        try:
            for index, lane in enumerate(piped):
                if not store and index == len(piped) - 1:
                    moved = got[lane] = self._move(lane, count)
                else:
                    got[lane] = self._tee(lane, count)
                    store = store or got[lane] < count
        finally:
            with self._cond:
                for lane in live:
                    lane.busy = False
                    if lane.closed:
                        lane.close_fds()
        # The consumers are woken (or served) once, below.
        if moved:
            buffer.skip(moved, notify=False)
        if moved < count:
            self._store(count - moved)
        with self._cond:
            claimed = []
            for lane in live:
                sent = got.get(lane, 0)
                if lane.generation != generations[lane]:
                    sent = 0
                if sent:
                    lane.add_segment_locked(start, sent, True)
                if sent < count:
                    lane.add_segment_locked(start + sent, count - sent,
                                            False)
                if lane.claim_locked():
                    claimed.append(lane)
            if len(claimed) < len(buffer.live_cursors()):
                self._cond.notify_all()
        for lane in claimed:
            lane.push()

    @staticmethod
    def _pipe_call(call, *args):
        try:
            return call(*args)
        except BlockingIOError:
            return 0

    def _tee(self, lane, count):
        if lane.closed:
            return 0
        return self._pipe_call(tee, self._read_fd, lane.write_fd, count)

    def _move(self, lane, count):
        if lane.closed:
            return 0
        return self._pipe_call(os.splice, self._read_fd, lane.write_fd,
                               count, None, None, _FLAGS)

    def _store(self, count):
        """Read what is left in the round pipe into the buffer: a copy."""
        buffer = self._buffer
        while count:
            view = buffer.writable(paced=False)
            if view is None:
                os.read(self._read_fd, count)
                return
            got = os.readv(self._read_fd, [view[:count]])
            buffer.publish(got, notify=False)
            self.stored_bytes += got
            count -= got


class Lane(object):
    """One consumer's pipe of a Fanout.

    Its stream comes in segments, each either waiting in the pipe or
    stored in the buffer. The consumer ``attach()``es its socket, then asks
    ``next()``: a count of bytes at the head of its pipe (``send()`` them),
    or 0 to take the next bytes from the buffer with ``peek()``, cut by
    ``clip()``, as without a pipe.

    While the consumer waits inside ``next()`` (parked), the producer may
    claim the lane and send what the pipe holds to the attached socket as
    far as the socket takes it without blocking (``push()``); the consumer
    wakes only for what is left. A claim is short (nothing blocks in it),
    and the consumer never leaves ``next()`` while the lane is claimed, so
    the socket is never used by both, nor closed under the producer.
    """

    def __init__(self, fanout, cursor, framed, pipe_bytes):
        self.cursor = cursor
        self.framed = framed
        self.read_fd, self.write_fd, self.capacity = _new_pipe(pipe_bytes)
        self.rounds = 1
        # [start, count, in the pipe, frame header not yet sent]
        self.segments = collections.deque()
        self.piped = 0
        self.resend_until = 0
        self.generation = 0
        self.busy = False
        self.closed = False
        self.sock = None
        self.held = None
        self.parked = False
        self.claimed = False
        self._fanout = fanout
        self._buffer = fanout._buffer
        self._cond = fanout._cond

    def has_room_locked(self):
        """Whether the pipe can take a whole round without blocking.

        A pipe counts slots, not bytes: a round takes at most the round
        pipe's slots, so ``rounds`` of them fit.
        """
        return self.piped < self.rounds and not self.closed

    def idle_locked(self):
        """Nothing for this consumer to send: it waits for the producer."""
        return (not self.segments and
                self.cursor.offset >= self.resend_until)

    def add_segment_locked(self, start, count, piped):
        last = self.segments[-1] if self.segments else None
        if (not piped and last is not None and not last[2] and
                last[0] + last[1] == start):
            last[1] += count
            return
        header = b''
        if piped and self.framed:
            header = protocol.FRAME_HEADER.pack(protocol.FRAME_DATA, count)
        self.segments.append([start, count, piped, header])
        if piped:
            self.piped += 1

    def attach(self, sock, held=None):
        """The socket this consumer sends to; the producer may push to it.

        ``held()``, if given, is True while this consumer must not send
        (a star's stop phase serves its leading destination first); the
        producer leaves the lane to the consumer then.
        """
        with self._cond:
            self.sock = sock
            self.held = held

    def claim_locked(self):
        """Producer: take the lane to push() its pipe, if the consumer waits.

        Only when the consumer is parked in next() with bytes at the head
        of the pipe to send; True if claimed.
        """
        if (self.sock is None or not self.parked or self.claimed or
                self.closed or self.cursor.dropped or
                self.cursor.offset < self.resend_until or
                (self.held is not None and self.held())):
            return False
        head = self._head_locked()
        if head is None or not head[2]:
            return False
        self.claimed = True
        return True

    def push(self):
        """Producer, on a claimed lane: send what the socket takes now.

        Sends the piped segments at the head without blocking; whatever the
        socket does not take (or a failure, which the consumer then meets
        on its own send) is left for the consumer, woken for it. Returns
        the stream bytes sent; the cursor counts them for the consumer.
        """
        sock = self.sock
        fd = sock.fileno()
        blocking = fd >= 0 and os.get_blocking(fd)
        pushed = 0
        try:
            if blocking:
                os.set_blocking(fd, False)
            while True:
                with self._cond:
                    if (self.closed or self.cursor.dropped or
                            not self.segments or not self.segments[0][2]):
                        break
                    head = self.segments[0]
                if head[3]:
                    head[3] = head[3][send_more(fd, head[3]):]
                    if head[3]:
                        break
                count = os.splice(self.read_fd, fd, head[1], flags=_FLAGS)
                if not count:
                    break
                pushed += count
                with self._cond:
                    head[0] += count
                    head[1] -= count
                    if not head[1]:
                        self.segments.popleft()
                        self.piped -= 1
                self._buffer.advance(self.cursor, count, notify=False)
                if head[1]:
                    break
        except BlockingIOError:
            pass
        except OSError:
            with self._cond:
                self.sock = None
        finally:
            if blocking:
                try:
                    os.set_blocking(fd, True)
                except OSError:
                    pass
            with self._cond:
                self.claimed = False
                if self.closed and not self.busy:
                    self.close_fds()
                if (self.segments or self.closed or self.cursor.dropped or
                        self._buffer.eof or self._buffer.abort_reason):
                    self._cond.notify_all()
        return pushed

    def _head_locked(self):
        """The head segment, past what the consumer already sent."""
        offset = self.cursor.offset
        while self.segments:
            start, count, piped, _ = self.segments[0]
            if piped:
                if start != offset:
                    raise AssertionError('pipe holds bytes from %d, cursor '
                                         'at %d' % (start, offset))
                return self.segments[0]
            if start + count > offset:
                return self.segments[0]
            self.segments.popleft()
        return None

    def next(self):
        """Wait for bytes to send: a count in the pipe, or 0 for the buffer.

        0 also when the stream ended or failed, or the hop was lost, which
        peek() then tells. Raises CursorDropped.
        """
        buffer = self._buffer
        with self._cond:
            self.parked = True
            try:
                while True:
                    if self.claimed:
                        self._cond.wait()
                        continue
                    if self.cursor.dropped:
                        raise stream_buffer.CursorDropped(
                            self.cursor.dropped)
                    if self.closed:
                        raise stream_buffer.CursorDropped('pipe closed')
                    if (self.cursor.interrupted or
                            self.cursor.offset < self.resend_until):
                        return 0
                    head = self._head_locked()
                    if head is not None:
                        return head[1] if head[2] else 0
                    if buffer.eof or buffer.abort_reason:
                        return 0
                    if (self._fanout.abandoned and
                            self.cursor.offset < buffer.head):
                        return 0
                    self._cond.wait()
            finally:
                self.parked = False

    def clip(self, view):
        """The part of a buffer view this consumer may send from memory."""
        offset = self.cursor.offset
        if offset < self.resend_until:
            return view[:self.resend_until - offset]
        with self._cond:
            head = self._head_locked()
        if head is None:
            return view
        return view[:head[0] + head[1] - offset]

    def send(self, sock, count, timeout=None):
        """Send the ``count`` bytes at the head of the pipe to ``sock``."""
        with self._cond:
            header = self.segments[0][3]
        if header:
            sock.sendall(header, socket.MSG_MORE)
        _splice_out(self.read_fd, sock, count, timeout)
        with self._cond:
            self.segments.popleft()
            self.piped -= 1
        self._buffer.advance(self.cursor, count)

    def reset(self):
        """Forget what the pipe holds: the consumer resends from the buffer.

        A repaired chain hop resumes from an offset it reports; every byte
        is in the buffer then (a chain that repairs stores them).
        """
        with self._cond:
            self._cond.wait_for(lambda: not self.busy and not self.claimed)
            while not self.closed:
                try:
                    if not os.read(self.read_fd, PIPE_BYTES):
                        break
                except BlockingIOError:
                    break
            self.segments.clear()
            self.piped = 0
            self.generation += 1
            self.resend_until = self._buffer.head
            self._cond.notify_all()

    def close(self):
        with self._cond:
            self.closed = True
            self.sock = None
            self.segments.clear()
            self.piped = 0
            self._cond.notify_all()
            if not self.busy and not self.claimed:
                self.close_fds()

    def close_fds(self):
        """Under the condition, once the producer is not using the pipe."""
        fds = (self.read_fd, self.write_fd)
        self.read_fd = self.write_fd = -1
        _close_fds(*fds)
