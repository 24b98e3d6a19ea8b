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

"""The destination end of a migration stream.

Each destination host runs one DestinationAgent per migration. It accepts
the authenticated stream hops of that migration, hands the bytes to the
local incoming QEMU in channel order, and in a chain forwards them to the
next destination too.
"""

import json
import logging
import socket
import ssl
import threading
import time
import uuid

from nova_multidest.dataplane import hops
from nova_multidest.dataplane import protocol
from nova_multidest.dataplane import stream_buffer
from nova_multidest.dataplane import zerocopy
from nova_multidest import exceptions

LOG = logging.getLogger(__name__)

STATUS_INTERVAL = 0.1
STATUS_HEARTBEAT = 1.0
STATUS_GRACE = 1.0
REPAIR_TIMEOUT = 10.0
TARGET_CONNECT_TIMEOUT = 5.0
PREEMPT_GRACE = 1.0


class DestinationAgent(object):
    """Receives the stream on a destination host for its local QEMU.

    It exists because a copied migration stream has to cross the network
    from the source host (or the previous destination of a chain), through
    an authenticated hop, and be handed to a QEMU that only listens locally.
    In a chain it also forwards every byte to the next destination, and
    keeps forwarding when its own QEMU dies.
    """

    def __init__(self, secret, target, listen=('127.0.0.1', 0), tls=None,
                 name=None, repair_timeout=REPAIR_TIMEOUT, forward_tls=None,
                 target_timeout=TARGET_CONNECT_TIMEOUT):
        protocol.check_secret(secret)
        protocol.check_tls(tls, 'server')
        protocol.check_tls(forward_tls, 'client')
        protocol.parse_target(target)
        self.secret = secret
        self.target = target
        self.tls = tls
        self.forward_tls = forward_tls
        self.name = name or 'agent-%s' % uuid.uuid4().hex[:8]
        self.repair_timeout = repair_timeout
        self.target_timeout = target_timeout
        self._listen = listen
        self._listener = None
        self._threads = hops.ThreadGroup('agent-%s' % self.name)
        self._lock = threading.Condition()
        self._channels = {}
        self._local_gate = hops.ChannelGate()
        self._forward_gate = hops.ChannelGate()
        self._status_socks = []
        self._sockets = set()
        self._migration_id = None
        self._position = None
        self._state = 'waiting'
        self._reason = None
        self._lost = {}
        self._closed = False
        self._status_version = 0
        self._status_sent = -1
        self.address = None

    # -- public ----------------------------------------------------------

    def start(self):
        """Listen for hops; return the ``(host, port)`` to give the relay."""
        sock = socket.socket(socket.AF_INET6 if ':' in self._listen[0]
                             else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(self._listen)
            sock.listen(16)
        except OSError:
            sock.close()
            raise
        self._listener = sock
        self.address = sock.getsockname()[:2]
        self._threads.start(self._accept_loop)
        self._threads.start(self._status_loop)
        LOG.info("Agent %s listens on %s:%s for target %s", self.name,
                 self.address[0], self.address[1], self.target)
        return self.address

    @property
    def state(self):
        """waiting, streaming, complete (local QEMU got it all), failed."""
        return self._state

    @property
    def reason(self):
        return self._reason

    @property
    def bytes_received(self):
        with self._lock:
            return sum(ch.buffer.head for ch in self._channels.values())

    @property
    def bytes_delivered(self):
        with self._lock:
            return sum(ch.delivered for ch in self._channels.values())

    def close(self):
        """Stop receiving, forwarding and delivering; idempotent."""
        self._set_state('failed', 'agent closed before the stream ended')
        with self._lock:
            if self._closed:
                return
            self._closed = True
            channels = list(self._channels.values())
            sockets = list(self._sockets)
            self._lock.notify_all()
        hops.shutdown(self._listener)
        self._local_gate.close()
        self._forward_gate.close()
        for channel in channels:
            channel.buffer.abort('agent closed')
            if channel.forwarder:
                channel.forwarder.close()
            channel.buffer.drop(channel.local_cursor, 'agent closed')
        for sock in sockets:
            hops.shutdown(sock)
        self._threads.join()
        for sock in sockets:
            hops.close_socket(sock)
        for channel in channels:
            if channel.fanout is not None:
                channel.fanout.close()
        hops.close_socket(self._listener)

    # -- state -----------------------------------------------------------

    def _set_state(self, state, reason=None):
        with self._lock:
            if self._state in hops.FINAL_STATES:
                return
            self._state = state
            if reason:
                self._reason = reason
            self._status_version += 1
            self._lock.notify_all()
        if state == 'failed':
            LOG.warning("Agent %s failed: %s", self.name, reason)
        else:
            LOG.info("Agent %s is %s", self.name, state)

    def _report_lost(self, names, reason, connection_error=False):
        with self._lock:
            for name in names:
                self._lost.setdefault(name, reason)
            self._status_version += 1
            self._lock.notify_all()

    def _status(self):
        return {'name': self.name, 'state': self._state,
                'reason': self._reason,
                'received': sum(c.buffer.head
                                for c in self._channels.values()),
                'delivered': sum(c.delivered
                                 for c in self._channels.values()),
                'lost': dict(self._lost)}

    def _status_loop(self):
        """Report this agent's status to every status connection.

        Sends on a change of state at once and, while bytes flow, at most
        every STATUS_INTERVAL; at least every STATUS_HEARTBEAT so that the
        relay can tell a frozen host from an idle one.
        """
        seen = -1
        last = None
        last_sent = 0.0
        while True:
            with self._lock:
                self._lock.wait_for(
                    lambda: self._closed or (
                        self._status_socks and self._status_version != seen),
                    STATUS_INTERVAL)
                if self._closed:
                    return
                if not self._status_socks:
                    continue
                status = self._status()
                changed = self._status_version != seen
                seen = self._status_version
                socks = list(self._status_socks)
            if (status == last and not changed and
                    time.monotonic() - last_sent < STATUS_HEARTBEAT):
                continue
            last = status
            last_sent = time.monotonic()
            sent_version = seen
            line = json.dumps(status).encode() + b'\n'
            for sock in socks:
                try:
                    sock.sendall(line)
                except OSError:
                    with self._lock:
                        if sock in self._status_socks:
                            self._status_socks.remove(sock)
            with self._lock:
                self._status_sent = sent_version
                self._lock.notify_all()

    def _flush_status(self, timeout=STATUS_GRACE):
        """Wait until the current status reached the status connections."""
        with self._lock:
            version = self._status_version
            self._lock.wait_for(
                lambda: self._closed or not self._status_socks or
                self._status_sent >= version, timeout)

    # -- connections -----------------------------------------------------

    def _accept_loop(self):
        while True:
            try:
                sock, peer = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    hops.close_socket(sock)
                    return
                self._sockets.add(sock)
            self._threads.start(self._serve, sock)

    def _serve(self, sock):
        conn = sock
        try:
            protocol.tune_socket(sock)
            conn = protocol.wrap_server(sock, self.tls)
            with self._lock:
                self._sockets.add(conn)
            header, reply = protocol.server_handshake(conn, self.secret,
                                                      self._decide)
        except (exceptions.AuthenticationFailed,
                exceptions.DestinationFailed) as exc:
            LOG.warning("Agent %s refused a connection: %s", self.name, exc)
            self._forget(sock, conn)
            return
        kind = header['kind']
        if kind == 'status':
            with self._lock:
                self._status_socks.append(conn)
                self._status_version += 1
                self._lock.notify_all()
            return
        if kind == 'gone':
            self._forget(sock, conn)
            self._skip_hop(header.get('name'), header.get('reason'))
            return
        if kind == 'drop':
            self._forget(sock, conn)
            return
        try:
            self._ingest(conn, header, reply['generation'])
        finally:
            self._forget(sock, conn)

    def _skip_hop(self, name, reason):
        """The relay says destination ``name`` is gone: forward around it.

        Before the source starts a channel nothing flows on it, so this
        agent would find its next hop gone only at its first send, after
        the destinations behind that hop gave up waiting for a repair.
        """
        with self._lock:
            forwarders = [ch.forwarder for ch in self._channels.values()
                          if ch.forwarder is not None]
        for forwarder in forwarders:
            forwarder.skip_failed_hop(name, reason)

    def _forget(self, *socks):
        with self._lock:
            for sock in socks:
                self._sockets.discard(sock)
        for sock in socks:
            hops.close_socket(sock)

    def _decide(self, header):
        """Accept or refuse an authenticated connection, under our lock."""
        kind = header.get('kind')
        if kind not in ('stream', 'status', 'drop', 'gone'):
            raise exceptions.DestinationFailed(
                destination=self.name, reason='unknown hop kind %r' % kind)
        with self._lock:
            if self._closed:
                raise exceptions.DestinationFailed(
                    destination=self.name, reason='agent is closing')
            migration_id = header.get('migration_id')
            if self._migration_id is None:
                self._migration_id = migration_id
            elif migration_id != self._migration_id:
                raise exceptions.DestinationFailed(
                    destination=self.name,
                    reason='it serves migration %s, not %s'
                           % (self._migration_id, migration_id))
            if kind == 'drop':
                # Before the reply: the source cuts the stream right after.
                self._drop_local('dropped by the source: %s'
                                 % header.get('reason'))
            if kind != 'stream':
                return {'name': self.name}
            return self._decide_stream(header)

    def _decide_stream(self, header):
        if header.get('chain') and header.get('tls') and not self.forward_tls:
            raise exceptions.DestinationFailed(
                destination=self.name,
                reason='the stream arrives over TLS but this agent has no '
                       'client TLS context (forward_tls) to forward it to '
                       'the next destination of the chain')
        if self._position is None:
            self._position = int(header.get('position') or 1)
        index = int(header['channel'])
        channel = self._channels.get(index)
        if channel is None:
            if self._state == 'failed' and not header.get('chain'):
                raise exceptions.DestinationFailed(
                    destination=self.name,
                    reason='this destination already failed: %s'
                           % self._reason)
            channel = _AgentChannel(self, index, header)
            self._channels[index] = channel
            channel.start()
            if self._state == 'waiting':
                self._state = 'streaming'
                self._status_version += 1
                self._lock.notify_all()
        else:
            self._take_over(channel, header)
            if channel.buffer.abort_reason:
                raise exceptions.DestinationFailed(
                    destination=self.name,
                    reason='channel %d was aborted: %s'
                           % (index, channel.buffer.abort_reason))
        if not channel.buffer.live_cursors():
            raise exceptions.DestinationFailed(
                destination=self.name,
                reason='nothing left to deliver to: local QEMU failed and '
                       'no next hop')
        channel.generation += 1
        channel.ingesting = True
        channel.upstream_position = int(header.get('sender_position') or 0)
        return {'name': self.name, 'offset': channel.buffer.head,
                'generation': channel.generation}

    def _take_over(self, channel, header):
        """Let a repairing upstream replace the current one, under our lock.

        A dead upstream's connection ends by itself. A frozen one stays
        open, so an upstream nearer the source may cut it; a farther one
        (a frozen agent waking up) may not, or two would fight over us.
        """
        if self._lock.wait_for(lambda: not channel.ingesting, PREEMPT_GRACE):
            return
        sender = int(header.get('sender_position') or 0)
        if sender < channel.upstream_position:
            LOG.warning("Agent %s: channel %d taken over from position %d "
                        "by position %d", self.name, channel.index,
                        channel.upstream_position, sender)
            hops.shutdown(channel.ingest_sock)
            if self._lock.wait_for(lambda: not channel.ingesting,
                                   protocol.HANDSHAKE_TIMEOUT / 2):
                return
        raise exceptions.DestinationFailed(
            destination=self.name,
            reason='channel %d is still streaming from another upstream'
                   % channel.index)

    def _ingest(self, sock, header, generation):
        with self._lock:
            channel = self._channels[int(header['channel'])]
            channel.ingest_sock = sock
        if channel.forwarder is None and not header.get('repair'):
            error = channel.ingest_pulled(sock)
        else:
            error = channel.ingest(sock, generation)
        with self._lock:
            channel.ingesting = False
            self._lock.notify_all()
            if error is None or self._closed or (
                    channel.generation != generation):
                return
            if header.get('repair'):
                LOG.warning("Agent %s lost channel %d upstream (%s); "
                            "waiting %ss for a repair", self.name,
                            channel.index, error, self.repair_timeout)
                self._lock.wait_for(
                    lambda: self._closed or
                    channel.generation != generation,
                    self.repair_timeout)
                if self._closed or channel.generation != generation:
                    return
        reason = 'upstream connection lost: %s' % error
        channel.buffer.abort(reason)
        channel.buffer.drop(channel.local_cursor, reason)

    def _drop_local(self, reason):
        with self._lock:
            channels = list(self._channels.values())
        self._set_state('failed', reason)
        for channel in channels:
            channel.buffer.drop(channel.local_cursor, reason)

    def _local_done(self):
        with self._lock:
            channels = list(self._channels.values())
            done = channels and all(c.local_done for c in channels)
        if done:
            self._set_state('complete')

    def _hop_dial(self, address, channel, rest, resume, hop_index, header):
        dial_header = dict(header, kind='stream', channel=channel,
                           chain=[[n, list(a)] for n, a in rest],
                           resume=resume, repair=True,
                           tls=self.forward_tls is not None,
                           sender_position=self._position,
                           position=self._position + hop_index + 1)
        timeout = protocol.HANDSHAKE_TIMEOUT
        if header.get('stall_timeout'):
            timeout = min(timeout, header['stall_timeout'])
        return protocol.connect(tuple(address), self.secret, dial_header,
                                self.forward_tls, timeout)


class _AgentChannel(object):
    """One channel on an agent: ingest, local delivery, next hop."""

    def __init__(self, agent, index, header):
        self.agent = agent
        self.index = index
        self.generation = 0
        self.ingesting = False
        self.ingest_sock = None
        self.upstream_position = 0
        self.local_done = False
        self.delivery_over = threading.Event()
        chain = [(n, tuple(a)) for n, a in header.get('chain') or []]
        lag_limit = int(header.get('lag_limit') or 256 * 2**20)
        repairs = hops.repairs(chain)
        self.buffer = stream_buffer.StreamBuffer(
            lag_limit, retain=lag_limit if repairs else 0)
        self.local_cursor = self.buffer.add_cursor(
            '%s/local' % agent.name, on_drop=self._local_dropped)
        self._local_sock = None
        self._splice_upstream = None
        self._ingest_splicer = None
        self.forwarder = None
        if chain:
            base = {'migration_id': header.get('migration_id'),
                    'lag_limit': lag_limit,
                    'stall_timeout': header.get('stall_timeout')}
            self.forwarder = hops.Forwarder(
                self.buffer, index, chain,
                lambda address, channel, rest, resume, hop_index:
                    agent._hop_dial(address, channel, rest, resume,
                                    hop_index, base),
                agent._forward_gate, agent._report_lost, repair=repairs,
                label='%s/forward' % agent.name,
                stall_timeout=header.get('stall_timeout'))
        # A hop that feeds its QEMU and the next hop gives both the same
        # pages (tee); the buffer keeps a copy only for a repair this hop
        # can make (hops.repairs).
        self.fanout = None
        self.local_lane = None
        if (self.forwarder is not None and zerocopy.TEE_SUPPORTED and
                not header.get('tls') and agent.forward_tls is None):
            self.fanout = zerocopy.Fanout(self.buffer, store=repairs)
            self.local_lane = self.fanout.add_lane(self.local_cursor,
                                                   framed=False)
            self.forwarder.use_lane(self.fanout)

    @property
    def delivered(self):
        """Bytes handed to the local QEMU, also by the lane's producer."""
        return self.local_cursor.sent

    def start(self):
        self.agent._threads.start(self._deliver)
        if self.forwarder:
            self.agent._threads.start(self.forwarder.run)

    def _local_dropped(self, cursor, reason):
        hops.shutdown(self._local_sock)
        self.agent._set_state('failed', 'local QEMU: %s' % reason)

    def ingest(self, sock, generation):
        """Read frames into the buffer; None on a clean end, else the error."""
        splicer = None
        if (self.forwarder is None and zerocopy.SUPPORTED and
                not isinstance(sock, ssl.SSLSocket)):
            try:
                splicer = zerocopy.Splicer()
            except zerocopy.SpliceUnsupported:
                pass
        self._ingest_splicer = splicer
        try:
            return self._ingest_frames(sock)
        finally:
            self._ingest_splicer = None
            if splicer is not None:
                splicer.close()

    def _ingest_frames(self, sock):
        buffer = self.buffer
        header = bytearray(protocol.FRAME_HEADER.size)
        header_view = memoryview(header)
        try:
            while True:
                got = 0
                while got < len(header):
                    n = sock.recv_into(header_view[got:])
                    if not n:
                        return 'connection closed mid-stream'
                    got += n
                frame_type, length = protocol.FRAME_HEADER.unpack(header)
                if frame_type == protocol.FRAME_DATA:
                    if not self._read_payload(sock, length):
                        # Nobody left to deliver to: say why before the
                        # upstream sees this connection close.
                        self.agent._flush_status()
                        return None
                elif frame_type == protocol.FRAME_END:
                    buffer.finish()
                    return None
                elif frame_type == protocol.FRAME_ABORT:
                    reason = protocol.recv_exact(
                        sock, min(length, protocol.MAX_HEADER_BYTES)).decode(
                            'utf-8', 'replace')
                    buffer.abort('the source aborted the stream: %s'
                                 % reason)
                    return None
                else:
                    return 'unknown frame type %d' % frame_type
        except (OSError, EOFError) as exc:
            return str(exc) or type(exc).__name__

    def _read_payload(self, sock, length):
        buffer = self.buffer
        fanout = self.fanout
        while length and fanout is not None and not fanout.abandoned:
            try:
                count = fanout.feed(sock, length, sock.gettimeout())
            except zerocopy.SpliceUnsupported as exc:
                LOG.info("Agent %s: channel %d cannot splice (%s), copies",
                         self.agent.name, self.index, exc)
                fanout.abandon()
                break
            if count is None:
                return False
            if not count:
                raise EOFError('connection closed inside a frame')
            length -= count
        while length:
            local = self._local_sock
            if (self._ingest_splicer is not None and local is not None and
                    buffer.caught_up(self.local_cursor)):
                count = self._splice_payload(sock, local, length)
                if count is None:
                    return False
                length -= count
                continue
            view = buffer.writable()
            if view is None:
                return False
            n = sock.recv_into(view, min(length, len(view)))
            if not n:
                raise EOFError('connection closed inside a frame')
            buffer.publish(n)
            length -= n
        return True

    def _splice_payload(self, sock, local, length):
        """Last hop of a chain: splice upstream bytes into the local QEMU.

        The stream still counts them, so a repaired upstream resumes from
        the right offset. Returns the bytes moved, None if the local QEMU
        failed (nobody is left to deliver to).
        """
        splicer = self._ingest_splicer
        try:
            count = splicer.fill(sock, length, sock.gettimeout())
        except zerocopy.SpliceUnsupported as exc:
            LOG.info("Agent %s: channel %d cannot splice (%s), copies",
                     self.agent.name, self.index, exc)
            self._ingest_splicer = None
            splicer.close()
            return 0
        if not count:
            raise EOFError('connection closed inside a frame')
        try:
            splicer.drain(local, count)
        except OSError as exc:
            self.buffer.drop(self.local_cursor, 'delivery failed: %s' % exc)
            return None
        self.buffer.pass_through(self.local_cursor, count)
        return count

    def ingest_pulled(self, sock):
        """Star: the local delivery reads the hop itself; wait for its end.

        A single consumer gains nothing from a reader thread, whose hand-off
        of every chunk costs as much CPU as copying it.
        """
        reader = _FrameReader(sock, self.buffer)
        if zerocopy.SUPPORTED and not isinstance(sock, ssl.SSLSocket):
            self._splice_upstream = reader
        self.buffer.set_pull(reader.pull, 'upstream connection')
        self.delivery_over.wait()
        self._splice_upstream = None
        self.buffer.set_pull(None)
        if self.local_cursor.dropped:
            # Say why before the upstream sees this connection close.
            self.agent._flush_status()
        return None

    def _deliver(self):
        try:
            self._deliver_stream()
        finally:
            self.delivery_over.set()

    def _deliver_stream(self):
        agent = self.agent
        cursor = self.local_cursor
        if not agent._local_gate.wait_turn(self.index):
            return
        try:
            sock = self._connect_local()
        finally:
            agent._local_gate.done(self.index)
        if sock is None:
            return
        self._local_sock = sock
        lane = self.local_lane
        if lane is not None:
            lane.attach(sock)
        try:
            while True:
                if lane is not None:
                    count = lane.next()
                    if count:
                        lane.send(sock, count)
                        continue
                if (self._splice_upstream is not None and
                        self.buffer.caught_up(cursor) and
                        self._deliver_spliced(sock)):
                    sock.shutdown(socket.SHUT_WR)
                    break
                view = self.buffer.peek(cursor)
                if not len(view):
                    sock.shutdown(socket.SHUT_WR)
                    break
                if lane is not None:
                    view = lane.clip(view)
                sock.sendall(view)
                self.buffer.advance(cursor, len(view))
        except stream_buffer.CursorDropped:
            return
        except stream_buffer.StreamAborted as exc:
            self.buffer.drop(cursor, str(exc))
            return
        except OSError as exc:
            self.buffer.drop(cursor, 'delivery failed: %s' % exc)
            return
        finally:
            hops.close_socket(sock)
            if lane is not None:
                lane.close()
        self.local_done = True
        agent._local_done()

    def _deliver_spliced(self, local):
        """Splice the upstream hop into the local QEMU, frame by frame.

        True at the end of the stream, False if these sockets cannot be
        spliced (the caller goes on copying). Failures surface as in the
        copying path: an upstream one aborts the stream, a local one is an
        OSError.
        """
        try:
            splicer = zerocopy.Splicer()
        except zerocopy.SpliceUnsupported:
            self._splice_upstream = None
            return False
        reader = self._splice_upstream
        upstream = reader.sock
        cursor = self.local_cursor
        with splicer:
            while True:
                if cursor.dropped:
                    raise stream_buffer.CursorDropped(cursor.dropped)
                try:
                    if not reader.remaining and not reader.next_data():
                        break
                    count = splicer.fill(upstream, reader.remaining,
                                         upstream.gettimeout())
                    if not count:
                        raise ConnectionError(
                            'connection closed inside a frame')
                except zerocopy.SpliceUnsupported as exc:
                    LOG.info("Agent %s: channel %d cannot splice (%s), "
                             "copies", self.agent.name, self.index, exc)
                    self._splice_upstream = None
                    return False
                except OSError as exc:
                    self.buffer.abort('upstream connection failed: %s'
                                      % exc)
                    break
                reader.remaining -= count
                splicer.drain(local, count)
                self.buffer.pass_through(cursor, count)
        if self.buffer.abort_reason:
            raise stream_buffer.StreamAborted(self.buffer.abort_reason)
        self.buffer.finish()
        return True

    def _connect_local(self):
        family, address = protocol.parse_target(self.agent.target)
        deadline = time.monotonic() + self.agent.target_timeout
        while True:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.connect(address)
                # Also for unix sockets: the sender's buffer bounds the
                # bytes in flight to QEMU, 200 KiB by default.
                protocol.tune_socket(sock)
                return sock
            except OSError as exc:
                sock.close()
                if (time.monotonic() > deadline or self.local_cursor.dropped
                        or self.agent._closed):
                    self.buffer.drop(self.local_cursor,
                                     'cannot connect to %s: %s'
                                     % (self.agent.target, exc))
                    return None
                time.sleep(0.05)


class _FrameReader(object):
    """Turns the frames of one hop back into stream bytes, for pull mode."""

    def __init__(self, sock, buffer):
        self.sock = sock
        self.remaining = 0
        self._buffer = buffer
        self._header = bytearray(protocol.FRAME_HEADER.size)

    def next_data(self):
        """Read up to the next stream bytes; 0 at the end of the stream.

        Returns how many stream bytes follow on the socket, which the
        caller reads itself and takes off ``remaining``.
        """
        while not self.remaining:
            frame_type, length = self._read_header()
            if frame_type == protocol.FRAME_DATA:
                self.remaining = length
            elif frame_type == protocol.FRAME_END:
                return 0
            elif frame_type == protocol.FRAME_ABORT:
                try:
                    reason = protocol.recv_exact(
                        self.sock, min(length, protocol.MAX_HEADER_BYTES))
                except EOFError as exc:
                    raise ConnectionError(str(exc))
                self._buffer.abort('the source aborted the stream: %s'
                                   % reason.decode('utf-8', 'replace'))
                return 0
            else:
                raise ConnectionError('unknown frame type %d' % frame_type)
        return self.remaining

    def pull(self, view):
        """Read stream bytes into ``view``; 0 at the end of the stream."""
        if not self.next_data():
            return 0
        count = self.sock.recv_into(view, min(len(view), self.remaining))
        if not count:
            raise ConnectionError('connection closed inside a frame')
        self.remaining -= count
        return count

    def _read_header(self):
        view = memoryview(self._header)
        got = 0
        while got < len(view):
            count = self.sock.recv_into(view[got:])
            if not count:
                raise ConnectionError('connection closed mid-stream')
            got += count
        return protocol.FRAME_HEADER.unpack(self._header)
