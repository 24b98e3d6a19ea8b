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
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import uuid

from nova_multidest.dataplane import agent
from nova_multidest.dataplane import hops
from nova_multidest.dataplane import protocol
from nova_multidest.dataplane import stream_buffer
from nova_multidest.dataplane import zerocopy
from nova_multidest import exceptions
from nova_multidest import vocabulary

LOG = logging.getLogger(__name__)

LOOPBACK = ('127.0.0.1', '::1', 'localhost')

DROP_NOTICE_TIMEOUT = 2.0
STALL_TIMEOUT = 60.0
# A leading destination that takes nothing this long in the stop phase no
# longer holds the others back (hops.LeaderFirst).
LEADER_STALL_TIMEOUT = 1.0
STATUS_GRACE = agent.STATUS_GRACE

DestinationProgress = collections.namedtuple(
    'DestinationProgress', ['state', 'bytes_sent', 'reason',
                            'bytes_delivered'],
    defaults=(0,))
DestinationProgress.__doc__ = (
    "Where one destination stands: state is connecting, streaming, "
    "complete or failed; bytes_sent counts stream bytes that reached its "
    "agent, bytes_delivered those its agent gave the local QEMU.")

# The destination end lives in agent.py; callers know it as relay's.
DestinationAgent = agent.DestinationAgent


class StreamRelay(object):
    """Takes the migration stream from the source QEMU and fans it out.

    QEMU can migrate to a single address only; the relay is that address.
    It authenticates to every destination agent before QEMU starts, copies
    each channel of the stream to every live destination (star) or to the
    head of a chain of agents, drops destinations that fail or fall behind
    without slowing the others, and reports per-destination progress.
    """

    def __init__(self, secret, destinations,
                 topology=vocabulary.Topology.STAR,
                 lag_limit=256 * 2**20, tls=None, listen=None,
                 migration_id=None, on_drop=None,
                 connect_timeout=protocol.HANDSHAKE_TIMEOUT,
                 stall_timeout=STALL_TIMEOUT):
        protocol.check_secret(secret)
        protocol.check_tls(tls, 'client')
        self._destinations = self._check_destinations(destinations)
        if topology not in vocabulary.Topology.ALL:
            raise exceptions.InvalidSettings(
                reason='unknown topology %r; use one of %s'
                       % (topology, ', '.join(vocabulary.Topology.ALL)))
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
        self.stall_timeout = stall_timeout
        self._listen = listen
        self._tempdir = None
        self._listener = None
        self.source_uri = None
        self._threads = hops.ThreadGroup('relay-%s' % self.migration_id[:8])
        self._lock = threading.Condition()
        self._state = {name: 'connecting' for name, _ in self._destinations}
        self._reasons = {}
        # Final and, for failures, on_drop already called.
        self._settled = set()
        self._reported = {}
        self._channels = []
        self._gates = {}
        self._priority = hops.LeaderFirst(LEADER_STALL_TIMEOUT)
        self._source_socks = []
        self._status_socks = []
        self._closed = False

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
    def bytes_to_destinations(self):
        """Bytes sent to agents: N copies in a star, one in a chain."""
        with self._lock:
            return sum(f.sent for ch in self._channels for f in ch.forwarders)

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
                if self.topology == vocabulary.Topology.STAR:
                    sent = sum(f.sent for ch in self._channels
                               for f in ch.forwarders
                               if f.hops[0][0] == name)
                else:
                    sent = reported.get('received', 0)
                result[name] = DestinationProgress(
                    self._state[name], sent, self._reasons.get(name),
                    reported.get('delivered', 0))
            return result

    def prioritize_leader(self):
        """The stop phase began: the leading destination goes first.

        Called when the source guest stops. In a star of several live
        destinations, the one the relay sent the most to (the first given
        on a tie) gets the rest of the stream before any other, so that
        the guest's downtime is one destination's share of the source
        link, not N. Returns that destination's name, or None where
        there is nothing to share (chain, one destination).
        """
        if self.topology != vocabulary.Topology.STAR:
            return None
        with self._lock:
            forwarders = [f for ch in self._channels for f in ch.forwarders]
            live = [name for name, _ in self._destinations
                    if self._state[name] not in hops.FINAL_STATES]
        if len(live) < 2:
            return None
        sent = {name: sum(f.sent for f in forwarders
                          if f.destination == name) for name in live}
        leader = max(live, key=sent.get)
        if not self._priority.start(
                leader, [f for f in forwarders if f.destination == leader]):
            return None
        LOG.info("Relay %s sends the last of the stream to %s first",
                 self.migration_id, leader)
        return leader

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
        self._repair_around(name, reason)

    def _stop_forwarders(self, name, reason):
        """In a star, stop sending to a failed destination at once."""
        if self.topology != vocabulary.Topology.STAR:
            return
        with self._lock:
            forwarders = [f for ch in self._channels
                          for f in ch.forwarders if f.hops[0][0] == name]
        for forwarder in forwarders:
            forwarder.stop(reason)

    def _repair_around(self, name, reason):
        """In a chain, stop sending to a destination that is gone, now.

        Only for a destination cut off or whose agent is gone: an agent
        whose QEMU failed still forwards, and its hop stays. Before the
        source starts a channel nothing is sent on it, so a dead hop would
        otherwise show only at the first send, after the destinations
        behind it gave up waiting for a repair (Forwarder.skip_failed_hop).
        """
        if self.topology == vocabulary.Topology.STAR:
            return
        with self._lock:
            if self._closed:
                return
            forwarders = [f for ch in self._channels for f in ch.forwarders]
            # The destination before it forwards to it: tell every one.
            others = [(n, a) for n, a in self._destinations
                      if n != name and self._state[n] not in
                      hops.FINAL_STATES]
        for forwarder in forwarders:
            forwarder.skip_failed_hop(name, reason)
        for other, address in others:
            self._threads.start(self._send_gone, other, address, name,
                                reason)

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
        return len(self._settled) == len(self._state)

    def close(self):
        with self._lock:
            if self._closed:
                return
            self._closed = True
            channels = list(self._channels)
            socks = self._source_socks + self._status_socks
            self._lock.notify_all()
        hops.shutdown(self._listener)
        for gate in self._gates.values():
            gate.close()
        for channel in channels:
            channel.buffer.abort('relay closed')
            for forwarder in channel.forwarders:
                forwarder.close()
        for sock in socks:
            hops.shutdown(sock)
        self._threads.join()
        for sock in socks:
            hops.close_socket(sock)
        for channel in channels:
            if channel.fanout is not None:
                channel.fanout.close()
        hops.close_socket(self._listener)
        if self._tempdir:
            shutil.rmtree(self._tempdir, ignore_errors=True)
        for name in list(self._state):
            self._mark_failed(name, 'relay closed before the stream ended')

    # -- destination state -----------------------------------------------

    def _mark_failed(self, name, reason, stop=True):
        """Record a destination's failure; True if it was not final yet."""
        with self._lock:
            if self._state[name] in hops.FINAL_STATES:
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
                hops.shutdown(sock)
        if self.on_drop and not closed:
            try:
                self.on_drop(name, reason)
            except Exception:
                LOG.exception("on_drop callback failed for %s", name)
        with self._lock:
            self._settled.add(name)
            self._lock.notify_all()
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
                        self._state[n] in hops.FINAL_STATES for n in names),
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
                if self._state[name] not in hops.FINAL_STATES:
                    self._state[name] = state
                    if state == 'complete':
                        self._settled.add(name)
                    self._lock.notify_all()

    # -- hops ------------------------------------------------------------

    def _header(self, **fields):
        return dict(fields, migration_id=self.migration_id,
                    lag_limit=self.lag_limit, tls=self.tls is not None)

    def _dial(self, address, channel, rest, resume, hop_index):
        header = self._header(
            kind='stream', channel=channel, resume=resume,
            repair=self.topology == vocabulary.Topology.CHAIN,
            chain=[[n, list(a)] for n, a in rest],
            sender_position=0, position=self._position(address),
            stall_timeout=self.stall_timeout)
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
        """Follow one agent's status until the relay closes.

        Reading goes on after the agent is final: a chain agent still
        reports the next hops it lost. Agents report at least every
        STATUS_HEARTBEAT, so silence for stall_timeout means a frozen host.
        """
        pending = b''
        sock.settimeout(self.stall_timeout)
        reason = 'lost contact with its agent'
        try:
            while True:
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    with self._lock:
                        if self._state[name] in hops.FINAL_STATES:
                            continue
                    reason = ('its agent sent no status for %ss'
                              % self.stall_timeout)
                    break
                if not data:
                    break
                pending += data
                *lines, pending = pending.split(b'\n')
                for line in lines:
                    self._update_status(name, json.loads(line))
        except (OSError, ValueError) as exc:
            LOG.debug("Status of %s unreadable: %s", name, exc)
        with self._lock:
            final = self._state[name] in hops.FINAL_STATES or self._closed
            gone = not self._closed and self._state[name] != 'complete'
        if not final:
            self._mark_failed(name, reason)
        if gone:
            self._repair_around(name, reason)

    def _send_drop(self, name, address, reason):
        self._notify(name, address, 'it was dropped', kind='drop',
                     reason=reason)

    def _send_gone(self, name, address, gone, reason):
        """Tell ``name``'s agent that destination ``gone`` is gone.

        An agent of an earlier release refuses the notice; its forwarder
        then finds the hop gone at its next send, as before.
        """
        self._notify(name, address, '%s is gone' % gone, kind='gone',
                     name=gone, reason=reason)

    def _notify(self, agent, address, what, **fields):
        """Send one notice to the agent of destination ``agent``.

        One that does not reach it is only logged: the agent's own state
        tells the rest.
        """
        try:
            sock, _ = protocol.connect(
                address, self.secret, self._header(**fields), self.tls,
                min(self.connect_timeout, DROP_NOTICE_TIMEOUT))
            hops.close_socket(sock)
        except (exceptions.DestinationFailed,
                exceptions.AuthenticationFailed) as exc:
            LOG.info("Could not tell %s that %s: %s", agent, what, exc)

    def _position(self, address):
        """1-based place of a destination in the order given: chain rank."""
        addresses = [a for _, a in self._destinations]
        return addresses.index(tuple(address)) + 1

    def _paths(self):
        """The hop lists the source sends to: one per destination, or one."""
        live = [(n, a) for n, a in self._destinations
                if self._state[n] not in hops.FINAL_STATES]
        if self.topology == vocabulary.Topology.STAR:
            return [[hop] for hop in live]
        return [live] if live else []

    def _new_channel(self, index):
        chain = self.topology == vocabulary.Topology.CHAIN
        with self._lock:
            paths = self._paths()
        repairs = chain and bool(paths) and hops.repairs(paths[0])
        buffer = stream_buffer.StreamBuffer(
            self.lag_limit, retain=self.lag_limit if repairs else 0)
        channel = _RelayChannel(index, buffer)
        with self._lock:
            self._channels.append(channel)
        # One destination takes the source socket's bytes straight
        # (Forwarder.splice_from); several share them through a Fanout's
        # pipes, and a chain that can repair keeps them too.
        if (self.tls is None and zerocopy.TEE_SUPPORTED and
                (len(paths) > 1 or repairs)):
            channel.fanout = zerocopy.Fanout(buffer, store=repairs)
        for path in paths:
            # A chain has one gate for its single path.
            gate_key = self.topology if chain else path[0][0]
            gate = self._gates.setdefault(gate_key, hops.ChannelGate())
            forwarder = hops.Forwarder(
                buffer, index, path, self._dial, gate, self._on_lost,
                repair=repairs,
                label='relay->%s' % path[0][0],
                stall_timeout=self.stall_timeout,
                priority=None if chain else self._priority)
            if channel.fanout is not None:
                forwarder.use_lane(channel.fanout)
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
                    hops.close_socket(sock)
                    return
                self._source_socks.append(sock)
                channel = (self._channels[0] if index == 0 else None)
            if sock.family != socket.AF_UNIX:
                protocol.tune_socket(sock)
            if channel is None:
                channel = self._new_channel(index)
            LOG.info("Relay %s accepted source channel %d",
                     self.migration_id, index)
            if channel.fanout is not None:
                self._threads.start(self._feed_source, channel, sock)
            elif len(channel.forwarders) == 1:
                if self.tls is None:
                    channel.forwarders[0].splice_from(sock)
                channel.buffer.set_pull(sock.recv_into)
            else:
                self._threads.start(self._read_source, channel, sock)
            index += 1

    def _feed_source(self, channel, sock):
        """Hand the source's bytes to the forwarders' pipes."""
        buffer = channel.buffer
        fanout = channel.fanout
        try:
            while True:
                count = fanout.feed(sock, zerocopy.PIPE_BYTES)
                if count is None:
                    LOG.warning("Relay %s stops reading channel %d: %s",
                                self.migration_id, channel.index,
                                buffer.abort_reason or 'no live destination')
                    break
                if not count:
                    buffer.finish()
                    LOG.info("Relay %s: source channel %d ended after %d "
                             "bytes", self.migration_id, channel.index,
                             buffer.head)
                    break
        except zerocopy.SpliceUnsupported as exc:
            LOG.info("Relay %s: channel %d cannot splice (%s), copies",
                     self.migration_id, channel.index, exc)
            fanout.abandon()
            fanout.close_source()
            self._read_source(channel, sock)
            return
        except OSError as exc:
            buffer.abort('source connection failed: %s' % exc)
        fanout.close_source()
        hops.close_socket(sock)

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
            hops.close_socket(sock)


class _RelayChannel(object):
    """One source connection and the forwarders that copy it."""

    def __init__(self, index, buffer):
        self.index = index
        self.buffer = buffer
        self.forwarders = []
        self.fanout = None
