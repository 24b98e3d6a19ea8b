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

"""Pieces shared by both ends of a stream hop: forwarding and threads.

The source relay and every destination agent of a chain forward a stream
channel to the next agent in the same way (authenticated hop, frames,
repair of a broken chain), and both own threads that close() must join.
"""

import itertools
import logging
import socket
import ssl
import threading
import time

from nova_multidest.dataplane import protocol
from nova_multidest.dataplane import stream_buffer
from nova_multidest.dataplane import zerocopy
from nova_multidest import exceptions
from nova_multidest import vocabulary

LOG = logging.getLogger(__name__)

FINAL_STATES = vocabulary.StreamState.FINAL


def shutdown(sock):
    """Unblock every thread using ``sock``; errors mean it is gone."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def close_socket(sock):
    """Shut down and close, whatever state the socket is in."""
    if sock is None:
        return
    shutdown(sock)
    try:
        sock.close()
    except OSError:
        pass


class ThreadGroup(object):
    """Threads of one relay or agent, so close() can join every one."""

    def __init__(self, prefix):
        self._prefix = prefix
        self._threads = []
        self._lock = threading.Lock()
        self._counter = itertools.count()

    def start(self, target, *args):
        name = '%s-%s-%d' % (self._prefix, target.__name__.strip('_'),
                             next(self._counter))
        thread = threading.Thread(target=target, args=args, name=name,
                                  daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()
        return thread

    def join(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        me = threading.current_thread()
        while True:
            with self._lock:
                threads = [t for t in self._threads
                           if t.is_alive() and t is not me]
            if not threads:
                return True
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                LOG.warning("Threads still running after close: %s",
                            [t.name for t in threads if t.is_alive()])
                return False


class ChannelGate(object):
    """Lets the connections of one path open in channel order.

    QEMU takes the first connection it accepts as the main channel, so the
    downstream connection of channel N must not open before that of N-1.
    """

    def __init__(self):
        self._next = 0
        self._closed = False
        self._cond = threading.Condition()

    def wait_turn(self, channel):
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._next >= channel)
            return not self._closed

    def done(self, channel):
        with self._cond:
            self._next = max(self._next, channel + 1)
            self._cond.notify_all()

    def close(self):
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class LeaderFirst(object):
    """Holds every destination of a star but the leading one at the end.

    A star's source link carries one copy per destination, so in the stop
    phase the last pages reach each destination at 1/N of the link while
    the guest runs nowhere. The destination that leads gets them first,
    with the whole link; the others follow once its forwarders are done
    (they lose the election if it runs). A leader that fails, or that
    takes nothing for ``stall_timeout`` seconds (a frozen host sends no
    reset), ends the hold: the others must not wait for it.
    """

    def __init__(self, stall_timeout):
        self.stall_timeout = stall_timeout
        self._cond = threading.Condition()
        self.leader = None
        self._pending = set()
        self._last = (0, 0.0)

    def start(self, leader, forwarders):
        """Hold every other destination until ``forwarders`` finish."""
        with self._cond:
            if self.leader is not None:
                return False
            self._pending = {f for f in forwarders if not f.finished}
            if not self._pending:
                return False
            self.leader = leader
            self._last = (self._leader_sent_locked(), time.monotonic())
            return True

    def holds(self, forwarder):
        return (bool(self._pending) and
                forwarder.destination != self.leader and
                not forwarder.cursor.dropped and not forwarder.closing)

    def wait_turn(self, forwarder):
        with self._cond:
            while self.holds(forwarder):
                self._cond.wait(self.stall_timeout)
                self._check_stall_locked()

    def _leader_sent_locked(self):
        return sum(f.sent for f in self._pending)

    def _check_stall_locked(self):
        if not self._pending:
            return
        sent, since = self._last
        now = time.monotonic()
        current = self._leader_sent_locked()
        if current != sent:
            self._last = (current, now)
        elif now - since >= self.stall_timeout:
            LOG.warning("Leading destination %s took nothing for %ss; the "
                        "other destinations go on", self.leader,
                        self.stall_timeout)
            self._pending = set()
            self._cond.notify_all()

    def finished(self, forwarder):
        with self._cond:
            self._pending.discard(forwarder)
            self._cond.notify_all()

    def wake(self):
        with self._cond:
            self._cond.notify_all()


def repairs(path):
    """Whether a chain forwarder on ``path`` (its hops, in order) repairs.

    A repair replaces a dead hop by the one after it, which resumes from
    what it holds: the forwarder must keep what it sent (a copy of every
    byte into memory, up to the lag limit) to resend it. With one hop on
    the path there is no hop after it, so that copy would serve nothing
    and the stream goes through pipes only: the relay of a one-host chain,
    and the last forwarding host of any chain. The hop before that one
    still repairs around it, from its own copy.
    """
    return len(path) > 1


class Forwarder(object):
    """Sends one channel of the stream along a path of agents.

    The first reachable hop of the path receives the stream, with the rest
    of the path as its chain remainder. With ``repair`` a broken hop is
    replaced by the next one, which resumes from the offset it reports. A
    hop that accepts nothing for ``stall_timeout`` seconds counts as broken:
    a frozen agent must not hold up the source or the rest of a chain.

    ``dial(address, channel, rest, resume, hop_index)`` opens one hop.
    """

    def __init__(self, buffer, channel, hops, dial, gate, on_lost,
                 repair, label, stall_timeout=None, priority=None):
        self.channel = channel
        self.priority = priority
        self.finished = False
        self.stall_timeout = stall_timeout
        self.hops = list(hops)
        self.connected = threading.Event()
        self.hop_name = None
        self._buffer = buffer
        self._dial = dial
        self._gate = gate
        self._on_lost = on_lost
        self._repair = repair
        self._label = label
        self._index = 0
        self._sock = None
        self._splice_source = None
        self.lane = None
        self._closing = False
        self._lock = threading.Lock()
        self.cursor = buffer.add_cursor(label, on_drop=self._cursor_dropped)

    @property
    def sent(self):
        """Bytes sent to the hops, by this forwarder or its lane's producer."""
        return self.cursor.sent

    def _cursor_dropped(self, cursor, reason):
        with self._lock:
            sock = self._sock
            remaining = [name for name, _ in self.hops[self._index:]]
            self._index = len(self.hops)
        shutdown(sock)
        if self.priority is not None:
            self.priority.wake()
        if remaining and not self._closing:
            self._on_lost(remaining, reason)

    def stop(self, reason):
        self._buffer.drop(self.cursor, reason)

    def skip_failed_hop(self, name, reason):
        """Repair around ``name`` now if it is the hop this one sends to.

        Called when the destination's agent is known to be gone. Before
        the source starts a channel its forwarder sends nothing, so a
        broken hop would only show at the first send, after the hops
        behind it gave up waiting for a repair (the agent's repair
        timeout) and failed too.
        """
        with self._lock:
            if (not self._repair or self._closing or self.finished or
                    self._index + 1 >= len(self.hops) or
                    self.hops[self._index][0] != name):
                return
            self._index += 1
            sock = self._sock
        LOG.info("%s: channel %d skips failed hop %s (%s)", self._label,
                 self.channel, name, reason)
        shutdown(sock)
        self._buffer.interrupt(self.cursor, 'hop %s failed: %s'
                               % (name, reason))

    def splice_from(self, source):
        """Take the stream straight from ``source``, the lone producer.

        Without repair nothing ever needs to be sent again, so the bytes
        can go from the source socket to the hop inside the kernel instead
        of through the buffer. A repairing forwarder keeps the buffer: a
        new hop resumes from bytes already sent.
        """
        if (not self._repair and zerocopy.SUPPORTED and
                not isinstance(source, ssl.SSLSocket)):
            self._splice_source = source

    def use_lane(self, fanout):
        """Take the stream from a Fanout's pipe instead of from memory."""
        self.lane = fanout.add_lane(self.cursor, framed=True)

    @property
    def destination(self):
        """The first hop: the destination a star forwarder feeds."""
        return self.hops[0][0]

    @property
    def closing(self):
        return self._closing

    def close(self):
        self._closing = True
        self._buffer.drop(self.cursor, 'relay closed')
        self._gate.close()
        if self.priority is not None:
            self.priority.wake()

    def _connect(self, resume):
        """Open the hop connection; False when no hop is left."""
        while True:
            with self._lock:
                if self._index >= len(self.hops) or self._closing:
                    return False
                index = self._index
                name, address = self.hops[index]
                rest = self.hops[index + 1:]
            try:
                sock, reply = self._dial(address, self.channel, rest, resume,
                                         index)
            except (exceptions.DestinationFailed,
                    exceptions.AuthenticationFailed) as exc:
                self._lose_current('cannot open the stream to it: %s' % exc,
                                   connection_error=True, index=index)
                if not self._repair:
                    return False
                continue
            offset = int(reply.get('offset', 0))
            if resume and self.lane is not None:
                self.lane.reset()
            try:
                self._buffer.rewind(self.cursor, offset)
            except stream_buffer.CursorDropped as exc:
                close_socket(sock)
                self._buffer.drop(self.cursor,
                                  'the chain cannot be repaired: %s' % exc)
                return False
            with self._lock:
                if self._closing or self.cursor.dropped:
                    close_socket(sock)
                    return False
                sock.settimeout(self.stall_timeout)
                self._sock = sock
                self.hop_name = name
            LOG.debug("%s: channel %d streams to %s from offset %d",
                      self._label, self.channel, name, offset)
            return True

    def _lose_current(self, reason, connection_error=False, index=None):
        with self._lock:
            if self._index >= len(self.hops):
                return
            if index is not None and index != self._index:
                # skip_failed_hop moved past it meanwhile.
                return
            name = self.hops[self._index][0]
            self._index += 1
            empty = self._index >= len(self.hops)
        self._on_lost([name], reason, connection_error=connection_error)
        if empty or not self._repair:
            remaining = [n for n, _ in self.hops[self._index:]]
            if remaining:
                self._on_lost(remaining, 'no upstream hop is left: %s'
                              % reason)
                self._index = len(self.hops)
            self._buffer.drop(self.cursor, reason)

    def run(self):
        try:
            if self._gate.wait_turn(self.channel):
                try:
                    ok = self._connect(resume=False)
                finally:
                    self._gate.done(self.channel)
                    self.connected.set()
            else:
                ok = False
                self.connected.set()
            while ok:
                try:
                    self._pump()
                    return
                except OSError as exc:
                    if self._closing or self.cursor.dropped:
                        return
                    with self._lock:
                        sock, self._sock = self._sock, None
                    close_socket(sock)
                    if not self._repair:
                        self._lose_current('stream connection lost: %s'
                                           % exc, connection_error=True)
                        return
                    ok = self._reconnect(exc)
        finally:
            with self._lock:
                sock, self._sock = self._sock, None
            close_socket(sock)
            if self.lane is not None:
                self.lane.close()
            self.connected.set()
            self.finished = True
            if self.priority is not None:
                self.priority.finished(self)

    def _reconnect(self, error):
        LOG.warning("%s: channel %d lost hop %s (%s); repairing",
                    self._label, self.channel, self.hop_name, error)
        if self._connect(resume=True):
            return True
        return False

    def _pump(self):
        buffer = self._buffer
        cursor = self.cursor
        sock = self._sock
        lane = self.lane
        if lane is not None:
            lane.attach(sock, None if self.priority is None else
                        lambda: self.priority.holds(self))
        while True:
            if lane is not None:
                try:
                    count = lane.next()
                except stream_buffer.CursorDropped:
                    return
                if count:
                    self._wait_turn()
                    lane.send(sock, count, sock.gettimeout())
                    continue
            if (self._splice_source is not None and
                    not isinstance(sock, ssl.SSLSocket) and
                    buffer.caught_up(cursor)):
                if self._pump_spliced(sock):
                    return
            try:
                view = buffer.peek(cursor)
            except stream_buffer.CursorDropped:
                return
            except stream_buffer.StreamAborted as exc:
                protocol.send_frame(sock, protocol.FRAME_ABORT,
                                    str(exc).encode())
                return
            if not len(view):
                protocol.send_frame(sock, protocol.FRAME_END)
                return
            if lane is not None:
                view = lane.clip(view)
            self._wait_turn()
            protocol.send_frame(sock, protocol.FRAME_DATA, view)
            buffer.advance(cursor, len(view))

    def _wait_turn(self):
        if self.priority is not None:
            self.priority.wait_turn(self)

    def _pump_spliced(self, sock):
        """Splice the source to the hop; False if these sockets cannot."""
        buffer = self._buffer
        cursor = self.cursor
        try:
            splicer = zerocopy.Splicer()
        except zerocopy.SpliceUnsupported:
            self._splice_source = None
            return False
        with splicer:
            while True:
                if cursor.dropped:
                    return True
                if buffer.abort_reason:
                    protocol.send_frame(sock, protocol.FRAME_ABORT,
                                        buffer.abort_reason.encode())
                    return True
                try:
                    count = splicer.fill(self._splice_source,
                                         splicer.capacity)
                except zerocopy.SpliceUnsupported as exc:
                    LOG.info("%s: channel %d cannot splice (%s), copies",
                             self._label, self.channel, exc)
                    self._splice_source = None
                    return False
                except OSError as exc:
                    buffer.abort('source connection failed: %s' % exc)
                    continue
                if not count:
                    if buffer.abort_reason or cursor.dropped:
                        continue
                    buffer.finish()
                    protocol.send_frame(sock, protocol.FRAME_END)
                    return True
                sock.sendall(protocol.FRAME_HEADER.pack(protocol.FRAME_DATA,
                                                        count))
                splicer.drain(sock, count, sock.gettimeout())
                buffer.pass_through(cursor, count)
