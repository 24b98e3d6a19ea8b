"""Deliver one QEMU migration stream to several destination hosts.

QEMU sends its migration stream to exactly one peer. Without a return path
the stream is one-way, so a byte-for-byte copy of it brings every
destination to the same state. The source host runs a StreamRelay that
QEMU migrates into; each destination host runs a DestinationAgent that
feeds the copy to its local, paused, incoming QEMU. The copies travel either
from the source to every destination (star) or from destination to
destination (chain), where each agent also forwards to the next one.

Each QEMU connection (the main channel, then any multifd channel) is one
*channel*; every channel travels on its own authenticated hop connection.
"""

import collections
import itertools
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid

from nova_multidest.dataplane import protocol
from nova_multidest.dataplane import stream_buffer
from nova_multidest import exceptions

LOG = logging.getLogger(__name__)

TOPOLOGIES = ('star', 'chain')
LOOPBACK = ('127.0.0.1', '::1', 'localhost')

# A return path would need exactly one destination's upstream bytes to reach
# the source; the relay does not carry any upstream bytes.
RETURN_PATH_SUPPORTED = False
MULTIFD_SUPPORTED = True
_UNSUPPORTED_CAPABILITIES = {
    'return-path': 'the relay carries the stream one way only, and with '
                   'several destinations only one of them could answer the '
                   'source',
    'postcopy-ram': 'post-copy needs a return path and makes the guest run '
                    'on one destination before the stream is complete',
}

STATUS_INTERVAL = 0.1
REPAIR_TIMEOUT = 10.0
TARGET_CONNECT_TIMEOUT = 5.0
DROP_NOTICE_TIMEOUT = 2.0
STATUS_GRACE = 1.0

DestinationProgress = collections.namedtuple(
    'DestinationProgress', ['state', 'bytes_sent', 'reason',
                            'bytes_delivered'],
    defaults=(0,))
DestinationProgress.__doc__ = (
    "Where one destination stands: state is connecting, streaming, "
    "complete or failed; bytes_sent counts stream bytes that reached its "
    "agent, bytes_delivered those its agent gave the local QEMU.")

FINAL_STATES = ('complete', 'failed')


def check_capabilities(capabilities):
    """Refuse migration capabilities the relay cannot honour.

    ``capabilities`` maps QMP capability names to booleans, as given to
    ``migrate-set-capabilities``. Raises UnsupportedCapability.
    """
    for name, enabled in sorted(capabilities.items()):
        if enabled and name in _UNSUPPORTED_CAPABILITIES:
            raise exceptions.UnsupportedCapability(
                capability=name, reason=_UNSUPPORTED_CAPABILITIES[name])


def _shutdown(sock):
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _close(sock):
    if sock is None:
        return
    _shutdown(sock)
    try:
        sock.close()
    except OSError:
        pass


class _ThreadGroup(object):
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


class _ChannelGate(object):
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


class _Forwarder(object):
    """Sends one channel of the stream along a path of agents.

    The first reachable hop of the path receives the stream, with the rest
    of the path as its chain remainder. With ``repair`` a broken hop is
    replaced by the next one, which resumes from the offset it reports.
    """

    def __init__(self, buffer, channel, hops, dial, gate, on_lost,
                 repair, label):
        self.channel = channel
        self.hops = list(hops)
        self.sent = 0
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
        self._closing = False
        self._lock = threading.Lock()
        self.cursor = buffer.add_cursor(label, on_drop=self._cursor_dropped)

    def _cursor_dropped(self, cursor, reason):
        with self._lock:
            sock = self._sock
            remaining = [name for name, _ in self.hops[self._index:]]
            self._index = len(self.hops)
        _shutdown(sock)
        if remaining and not self._closing:
            self._on_lost(remaining, reason)

    def stop(self, reason):
        self._buffer.drop(self.cursor, reason)

    def close(self):
        self._closing = True
        self._buffer.drop(self.cursor, 'relay closed')
        self._gate.close()

    def _connect(self, resume):
        """Open the hop connection; False when no hop is left."""
        while True:
            with self._lock:
                if self._index >= len(self.hops) or self._closing:
                    return False
                name, address = self.hops[self._index]
                rest = self.hops[self._index + 1:]
            try:
                sock, reply = self._dial(address, self.channel, rest, resume)
            except (exceptions.DestinationFailed,
                    exceptions.AuthenticationFailed) as exc:
                self._lose_current('cannot open the stream to it: %s' % exc,
                                   connection_error=True)
                if not self._repair:
                    return False
                continue
            offset = int(reply.get('offset', 0))
            try:
                self._buffer.rewind(self.cursor, offset)
            except stream_buffer.CursorDropped as exc:
                _close(sock)
                self._buffer.drop(self.cursor,
                                  'the chain cannot be repaired: %s' % exc)
                return False
            with self._lock:
                if self._closing or self.cursor.dropped:
                    _close(sock)
                    return False
                self._sock = sock
                self.hop_name = name
            LOG.debug("%s: channel %d streams to %s from offset %d",
                      self._label, self.channel, name, offset)
            return True

    def _lose_current(self, reason, connection_error=False):
        with self._lock:
            if self._index >= len(self.hops):
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
                    _close(sock)
                    if not self._repair:
                        self._lose_current('stream connection lost: %s'
                                           % exc, connection_error=True)
                        return
                    ok = self._reconnect(exc)
        finally:
            with self._lock:
                sock, self._sock = self._sock, None
            _close(sock)
            self.connected.set()

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
        while True:
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
            protocol.send_frame(sock, protocol.FRAME_DATA, view)
            buffer.advance(cursor, len(view))
            self.sent += len(view)


class DestinationAgent(object):
    """Receives the stream on a destination host for its local QEMU.

    It exists because a copied migration stream has to cross the network
    from the source host (or the previous destination of a chain), through
    an authenticated hop, and be handed to a QEMU that only listens locally.
    In a chain it also forwards every byte to the next destination, and
    keeps forwarding when its own QEMU dies.
    """

    def __init__(self, secret, target, listen=('127.0.0.1', 0), tls=None,
                 name=None, repair_timeout=REPAIR_TIMEOUT, forward_tls=None):
        protocol._check_secret(secret)
        protocol.check_tls(tls, 'server')
        protocol.check_tls(forward_tls, 'client')
        protocol.parse_target(target)
        self.secret = secret
        self.target = target
        self.tls = tls
        self.forward_tls = forward_tls
        self.name = name or 'agent-%s' % uuid.uuid4().hex[:8]
        self.repair_timeout = repair_timeout
        self._listen = listen
        self._listener = None
        self._threads = _ThreadGroup('agent-%s' % self.name)
        self._lock = threading.Condition()
        self._channels = {}
        self._local_gate = _ChannelGate()
        self._forward_gate = _ChannelGate()
        self._status_socks = []
        self._sockets = set()
        self._migration_id = None
        self._state = 'waiting'
        self._reason = None
        self._lost = {}
        self._closed = False
        self._status_version = 0
        self._status_sent = -1
        self.address = None

    # -- public ----------------------------------------------------------

    def start(self):
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
        with self._lock:
            if self._closed:
                return
            self._closed = True
            channels = list(self._channels.values())
            sockets = list(self._sockets)
            self._lock.notify_all()
        _shutdown(self._listener)
        self._local_gate.close()
        self._forward_gate.close()
        for channel in channels:
            channel.buffer.abort('agent closed')
            if channel.forwarder:
                channel.forwarder.close()
            channel.buffer.drop(channel.local_cursor, 'agent closed')
        for sock in sockets:
            _shutdown(sock)
        self._threads.join()
        for sock in sockets:
            _close(sock)
        _close(self._listener)
        if self._state not in FINAL_STATES:
            self._set_state('failed', 'agent closed before the stream ended')

    # -- state -----------------------------------------------------------

    def _set_state(self, state, reason=None):
        with self._lock:
            if self._state in FINAL_STATES:
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
        every STATUS_INTERVAL.
        """
        seen = -1
        last = None
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
            if status == last and not changed:
                continue
            last = status
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
                    _close(sock)
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
        if kind == 'drop':
            self._forget(sock, conn)
            return
        try:
            self._ingest(conn, header, reply['generation'])
        finally:
            self._forget(sock, conn)

    def _forget(self, *socks):
        with self._lock:
            for sock in socks:
                self._sockets.discard(sock)
        for sock in socks:
            _close(sock)

    def _decide(self, header):
        """Accept or refuse an authenticated connection, under our lock."""
        kind = header.get('kind')
        if kind not in ('stream', 'status', 'drop'):
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
        index = int(header['channel'])
        channel = self._channels.get(index)
        if channel is None:
            channel = _AgentChannel(self, index, header)
            self._channels[index] = channel
            channel.start()
            if self._state == 'waiting':
                self._state = 'streaming'
                self._status_version += 1
                self._lock.notify_all()
        else:
            if not self._lock.wait_for(lambda: not channel.ingesting,
                                       protocol.HANDSHAKE_TIMEOUT / 2):
                raise exceptions.DestinationFailed(
                    destination=self.name,
                    reason='channel %d is still streaming from another '
                           'upstream' % index)
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
        return {'name': self.name, 'offset': channel.buffer.head,
                'generation': channel.generation}

    def _ingest(self, sock, header, generation):
        with self._lock:
            channel = self._channels[int(header['channel'])]
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

    def _hop_dial(self, address, channel, rest, resume, header):
        dial_header = dict(header, kind='stream', channel=channel,
                           chain=[[n, list(a)] for n, a in rest],
                           resume=resume, repair=True,
                           tls=self.forward_tls is not None)
        return protocol.connect(tuple(address), self.secret, dial_header,
                                self.forward_tls)


class _AgentChannel(object):
    """One channel on an agent: ingest, local delivery, next hop."""

    def __init__(self, agent, index, header):
        self.agent = agent
        self.index = index
        self.generation = 0
        self.ingesting = False
        self.delivered = 0
        self.local_done = False
        chain = [(n, tuple(a)) for n, a in header.get('chain') or []]
        lag_limit = int(header.get('lag_limit') or 256 * 2**20)
        self.buffer = stream_buffer.StreamBuffer(
            lag_limit, retain=lag_limit if chain else 0)
        self.local_cursor = self.buffer.add_cursor(
            '%s/local' % agent.name, on_drop=self._local_dropped)
        self._local_sock = None
        self.forwarder = None
        if chain:
            base = {'migration_id': header.get('migration_id'),
                    'lag_limit': lag_limit}
            self.forwarder = _Forwarder(
                self.buffer, index, chain,
                lambda address, channel, rest, resume: agent._hop_dial(
                    address, channel, rest, resume, base),
                agent._forward_gate, agent._report_lost, repair=True,
                label='%s/forward' % agent.name)

    def start(self):
        self.agent._threads.start(self._deliver)
        if self.forwarder:
            self.agent._threads.start(self.forwarder.run)

    def _local_dropped(self, cursor, reason):
        _shutdown(self._local_sock)
        self.agent._set_state('failed', 'local QEMU: %s' % reason)

    def ingest(self, sock, generation):
        """Read frames into the buffer; None on a clean end, else the error."""
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
                    reason = protocol.recv_exact(sock, length).decode(
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
        while length:
            view = buffer.writable()
            if view is None:
                return False
            n = sock.recv_into(view, min(length, len(view)))
            if not n:
                raise EOFError('connection closed inside a frame')
            buffer.publish(n)
            length -= n
        return True

    def _deliver(self):
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
        try:
            while True:
                view = self.buffer.peek(cursor)
                if not len(view):
                    sock.shutdown(socket.SHUT_WR)
                    break
                sock.sendall(view)
                self.delivered += len(view)
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
            _close(sock)
        self.local_done = True
        agent._local_done()

    def _connect_local(self):
        family, address = protocol.parse_target(self.agent.target)
        deadline = time.monotonic() + TARGET_CONNECT_TIMEOUT
        while True:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.connect(address)
                if family != socket.AF_UNIX:
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


class StreamRelay(object):
    """Takes the migration stream from the source QEMU and fans it out.

    QEMU can migrate to a single address only; the relay is that address.
    It authenticates to every destination agent before QEMU starts, copies
    each channel of the stream to every live destination (star) or to the
    head of a chain of agents, drops destinations that fail or fall behind
    without slowing the others, and reports per-destination progress.
    """

    def __init__(self, secret, destinations, topology='star',
                 lag_limit=256 * 2**20, tls=None, listen=None,
                 migration_id=None, on_drop=None,
                 connect_timeout=protocol.HANDSHAKE_TIMEOUT):
        protocol._check_secret(secret)
        protocol.check_tls(tls, 'client')
        self._destinations = self._check_destinations(destinations)
        if topology not in TOPOLOGIES:
            raise exceptions.InvalidSettings(
                reason='unknown topology %r; use one of %s'
                       % (topology, ', '.join(TOPOLOGIES)))
        if not isinstance(lag_limit, int) or lag_limit <= 0:
            raise exceptions.InvalidSettings(
                reason='lag_limit must be a positive number of bytes, not %r'
                       % (lag_limit,))
        if listen is not None:
            family, address = protocol.parse_target(listen)
            if family != socket.AF_UNIX and address[0] not in LOOPBACK:
                # QEMU cannot authenticate, so only local processes may
                # reach the source side.
                raise exceptions.InvalidSettings(
                    reason='the relay takes the source stream on a unix '
                           'socket or a loopback address, not %s' % listen)
        self.secret = secret
        self.topology = topology
        self.lag_limit = lag_limit
        self.tls = tls
        self.migration_id = migration_id or uuid.uuid4().hex
        self.on_drop = on_drop
        self.connect_timeout = connect_timeout
        self._listen = listen
        self._tempdir = None
        self._listener = None
        self.source_uri = None
        self._threads = _ThreadGroup('relay-%s' % self.migration_id[:8])
        self._lock = threading.Condition()
        self._state = {name: 'connecting' for name, _ in self._destinations}
        self._reasons = {}
        self._reported = {}
        self._channels = []
        self._gates = {}
        self._source_socks = []
        self._status_socks = []
        self._closed = False
        self._started = False

    @staticmethod
    def _check_destinations(destinations):
        try:
            destinations = [(name, (address[0], int(address[1])))
                            for name, address in destinations]
        except (TypeError, ValueError, IndexError):
            raise exceptions.InvalidSettings(
                reason='destinations must be a list of (name, (host, port))')
        if not destinations:
            raise exceptions.InvalidSettings(
                reason='at least one destination is needed')
        names = [name for name, _ in destinations]
        addresses = [address for _, address in destinations]
        for label, values in (('name', names), ('address', addresses)):
            duplicates = sorted(str(v) for v, n in
                                collections.Counter(values).items() if n > 1)
            if duplicates:
                raise exceptions.InvalidSettings(
                    reason='destination %s listed twice: %s'
                           % (label, ', '.join(duplicates)))
        return destinations

    # -- public ----------------------------------------------------------

    def start(self):
        """Connect to every destination, then listen for the source QEMU.

        Raises AllDestinationsFailed if no destination could be reached.
        """
        self._started = True
        for name, address in self._destinations:
            self._open_status(name, address)
        self._new_channel(0)
        if self._channels[0].forwarders:
            for forwarder in self._channels[0].forwarders:
                forwarder.connected.wait(self.connect_timeout * 2)
        if not self.live_destinations():
            reasons = '; '.join('%s: %s' % item
                                for item in sorted(self._reasons.items()))
            self.close()
            raise exceptions.AllDestinationsFailed(reasons=reasons)
        self._listen_for_source()
        self._threads.start(self._accept_loop)
        LOG.info("Relay %s streams %s to %s via %s", self.migration_id,
                 self.source_uri, ', '.join(self._state), self.topology)

    def live_destinations(self):
        """Names of the destinations not dropped, in the given order."""
        with self._lock:
            return [name for name, _ in self._destinations
                    if self._state[name] != 'failed']

    @property
    def bytes_from_source(self):
        with self._lock:
            return sum(ch.buffer.head for ch in self._channels)

    def progress(self):
        """Map each destination name to its DestinationProgress.

        Bytes read from the source are in ``bytes_from_source``.
        """
        with self._lock:
            result = {}
            for name, _ in self._destinations:
                reported = self._reported.get(name, {})
                if self.topology == 'star':
                    sent = sum(f.sent for ch in self._channels
                               for f in ch.forwarders
                               if f.hops[0][0] == name)
                else:
                    sent = reported.get('received', 0)
                result[name] = DestinationProgress(
                    self._state[name], sent, self._reasons.get(name),
                    reported.get('delivered', 0))
            return result

    def drop(self, name, reason):
        """Cut one destination off now; the others keep streaming."""
        if name not in self._state:
            raise exceptions.InvalidSettings(
                reason='no destination named %r in this migration' % name)
        self._mark_failed(name, 'dropped: %s' % reason, stop=False)
        address = dict(self._destinations)[name]
        with self._lock:
            if self._closed:
                return
        self._threads.start(self._cut_off, name, address, reason)

    def _cut_off(self, name, address, reason):
        # The agent hears the reason before its stream stops.
        self._send_drop(name, address, reason)
        self._stop_forwarders(name, reason)

    def _stop_forwarders(self, name, reason):
        """In a star, stop sending to a failed destination at once."""
        if self.topology != 'star':
            return
        with self._lock:
            forwarders = [f for ch in self._channels
                          for f in ch.forwarders if f.hops[0][0] == name]
        for forwarder in forwarders:
            forwarder.stop(reason)

    def wait_finished(self, timeout=None):
        """Wait until every destination is complete or failed.

        "complete" means the agent gave its QEMU every byte the source
        sent before closing the stream; a source QEMU that was cancelled
        or killed also closes it, so whether the migration succeeded is
        for the source's and destination's own QEMU status to say.
        """
        with self._lock:
            return self._lock.wait_for(self._finished_locked, timeout)

    def abort(self, reason):
        """Fail every destination: the source migration did not succeed.

        The agents close their QEMU's incoming stream at once instead of
        passing on an end of stream that would look complete.
        """
        with self._lock:
            channels = list(self._channels)
        LOG.warning("Relay %s aborts the stream: %s", self.migration_id,
                    reason)
        for channel in channels:
            channel.buffer.abort(reason)
        for name, _ in self._destinations:
            self._mark_failed(name, 'stream aborted: %s' % reason,
                              stop=False)

    def _finished_locked(self):
        return all(state in FINAL_STATES for state in self._state.values())

    def close(self):
        with self._lock:
            if self._closed:
                return
            self._closed = True
            channels = list(self._channels)
            socks = self._source_socks + self._status_socks
            self._lock.notify_all()
        _shutdown(self._listener)
        for gate in self._gates.values():
            gate.close()
        for channel in channels:
            channel.buffer.abort('relay closed')
            for forwarder in channel.forwarders:
                forwarder.close()
        for sock in socks:
            _shutdown(sock)
        self._threads.join()
        for sock in socks:
            _close(sock)
        _close(self._listener)
        if self._tempdir:
            shutil.rmtree(self._tempdir, ignore_errors=True)
        for name in list(self._state):
            self._mark_failed(name, 'relay closed before the stream ended')

    # -- destination state -----------------------------------------------

    def _mark_failed(self, name, reason, stop=True):
        """Record a destination's failure; True if it was not final yet."""
        with self._lock:
            if self._state[name] in FINAL_STATES:
                return False
            self._state[name] = 'failed'
            self._reasons[name] = reason
            live = [n for n, s in self._state.items() if s != 'failed']
            channels = list(self._channels)
            closed = self._closed
            self._lock.notify_all()
        if not closed:
            LOG.warning("Relay %s dropped destination %s: %s",
                        self.migration_id, name, reason)
            if stop:
                self._stop_forwarders(name, reason)
        if not live:
            for channel in channels:
                channel.buffer.abort('every destination failed')
            for sock in self._source_socks:
                _shutdown(sock)
        if self.on_drop and not closed:
            try:
                self.on_drop(name, reason)
            except Exception:
                LOG.exception("on_drop callback failed for %s", name)
        return True

    def _on_lost(self, names, reason, connection_error=False):
        """A forwarder gave up on these destinations: tell their agents.

        An agent whose stream stalls cannot tell on its own that the relay
        gave up on it, and in a chain the hops behind a lost one wait for a
        repair that will not come. A broken connection is usually explained
        by the agent's own status (its QEMU died), which is the better
        reason to report, so wait briefly for it.
        """
        addresses = dict(self._destinations)
        if connection_error:
            with self._lock:
                self._lock.wait_for(
                    lambda: self._closed or all(
                        self._state[n] in FINAL_STATES for n in names),
                    STATUS_GRACE)
        for name in names:
            if self._mark_failed(name, reason):
                with self._lock:
                    if self._closed:
                        continue
                self._threads.start(self._send_drop, name, addresses[name],
                                    reason)

    def _update_status(self, name, status):
        with self._lock:
            self._reported[name] = status
            self._lock.notify_all()
        for lost, reason in sorted(status.get('lost', {}).items()):
            if lost in self._state:
                self._mark_failed(lost, reason)
        state = status.get('state')
        if state == 'failed':
            self._mark_failed(name, status.get('reason') or 'agent failed')
        elif state in ('streaming', 'complete'):
            with self._lock:
                if self._state[name] not in FINAL_STATES:
                    self._state[name] = state
                    self._lock.notify_all()

    # -- hops ------------------------------------------------------------

    def _header(self, **fields):
        return dict(fields, migration_id=self.migration_id,
                    lag_limit=self.lag_limit, tls=self.tls is not None)

    def _dial(self, address, channel, rest, resume):
        header = self._header(
            kind='stream', channel=channel, resume=resume,
            repair=self.topology == 'chain',
            chain=[[n, list(a)] for n, a in rest])
        return protocol.connect(address, self.secret, header, self.tls,
                                self.connect_timeout)

    def _open_status(self, name, address):
        try:
            sock, _ = protocol.connect(address, self.secret,
                                       self._header(kind='status'),
                                       self.tls, self.connect_timeout)
        except (exceptions.DestinationFailed,
                exceptions.AuthenticationFailed) as exc:
            self._mark_failed(name, 'cannot reach its agent: %s' % exc)
            return
        with self._lock:
            self._status_socks.append(sock)
        self._threads.start(self._read_status, name, sock)

    def _read_status(self, name, sock):
        pending = b''
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                pending += data
                *lines, pending = pending.split(b'\n')
                for line in lines:
                    self._update_status(name, json.loads(line))
                with self._lock:
                    if self._state[name] in FINAL_STATES:
                        return
        except (OSError, ValueError) as exc:
            LOG.debug("Status of %s unreadable: %s", name, exc)
        with self._lock:
            final = self._state[name] in FINAL_STATES or self._closed
        if not final:
            self._mark_failed(name, 'lost contact with its agent')

    def _send_drop(self, name, address, reason):
        try:
            sock, _ = protocol.connect(
                address, self.secret, self._header(kind='drop',
                                                   reason=reason),
                self.tls, min(self.connect_timeout, DROP_NOTICE_TIMEOUT))
            _close(sock)
        except (exceptions.DestinationFailed,
                exceptions.AuthenticationFailed) as exc:
            LOG.info("Could not tell %s it was dropped: %s", name, exc)

    def _paths(self):
        """The hop lists the source sends to: one per destination, or one."""
        live = [(n, a) for n, a in self._destinations
                if self._state[n] not in FINAL_STATES]
        if self.topology == 'star':
            return [[hop] for hop in live]
        return [live] if live else []

    def _new_channel(self, index):
        buffer = stream_buffer.StreamBuffer(
            self.lag_limit,
            retain=self.lag_limit if self.topology == 'chain' else 0)
        channel = _RelayChannel(index, buffer)
        with self._lock:
            paths = self._paths()
            self._channels.append(channel)
        for path in paths:
            gate_key = path[0][0] if self.topology == 'star' else 'chain'
            gate = self._gates.setdefault(gate_key, _ChannelGate())
            forwarder = _Forwarder(
                buffer, index, path, self._dial, gate, self._on_lost,
                repair=self.topology == 'chain',
                label='relay->%s' % path[0][0])
            channel.forwarders.append(forwarder)
            self._threads.start(forwarder.run)
        return channel

    # -- source ----------------------------------------------------------

    def _listen_for_source(self):
        listen = self._listen
        if listen is None:
            self._tempdir = tempfile.mkdtemp(prefix='multidest-relay-')
            listen = 'unix:%s' % os.path.join(self._tempdir, 'source.sock')
        family, address = protocol.parse_target(listen)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(16)
        except OSError as exc:
            sock.close()
            self.close()
            raise exceptions.InvalidSettings(
                reason='cannot listen on %s: %s' % (listen, exc))
        self._listener = sock
        if family == socket.AF_UNIX:
            self.source_uri = 'unix:%s' % address
        else:
            host, port = sock.getsockname()[:2]
            self.source_uri = 'tcp:%s:%d' % (
                '[%s]' % host if ':' in host else host, port)

    def _accept_loop(self):
        index = 0
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    _close(sock)
                    return
                self._source_socks.append(sock)
                channel = (self._channels[0] if index == 0 else None)
            if sock.family != socket.AF_UNIX:
                protocol.tune_socket(sock)
            if channel is None:
                channel = self._new_channel(index)
            LOG.info("Relay %s accepted source channel %d",
                     self.migration_id, index)
            self._threads.start(self._read_source, channel, sock)
            index += 1

    def _read_source(self, channel, sock):
        buffer = channel.buffer
        try:
            while True:
                view = buffer.writable()
                if view is None:
                    LOG.warning("Relay %s stops reading channel %d: %s",
                                self.migration_id, channel.index,
                                buffer.abort_reason or 'no live destination')
                    return
                n = sock.recv_into(view)
                if not n:
                    buffer.finish()
                    LOG.info("Relay %s: source channel %d ended after %d "
                             "bytes", self.migration_id, channel.index,
                             buffer.head)
                    return
                buffer.publish(n)
        except OSError as exc:
            buffer.abort('source connection failed: %s' % exc)
        finally:
            _close(sock)


class _RelayChannel(object):
    """One source connection and the forwarders that copy it."""

    def __init__(self, index, buffer):
        self.index = index
        self.buffer = buffer
        self.forwarders = []
