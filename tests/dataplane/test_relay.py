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

"""The stream relay against fake QEMU sources and sinks (no QEMU needed).

A fake source writes seeded pseudo-random bytes into the relay; each fake
destination QEMU is a unix socket that hashes what it receives. A live
destination must get exactly the source's bytes; a failed one must be
dropped without disturbing the others or blocking the source.
"""

import collections
import errno
import hashlib
import itertools
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import ddt
import fixtures
import testtools

from nova_multidest.dataplane import protocol
from nova_multidest.dataplane import relay
from nova_multidest.dataplane import zerocopy
from nova_multidest import exceptions

MiB = 2**20
WAIT = 30
# A source kept IN_STEP with the healthy sinks puts at most IN_STEP plus one
# write between any two of them, however their threads are scheduled; a
# hung sink fills a few socket and relay buffers, then falls behind by the
# rest of the stream. LAG_LIMIT lies between the two.
IN_STEP = 8 * MiB
LAG_LIMIT = 32 * MiB


def make_data(size, seed):
    return random.Random(seed).randbytes(size)


def digest(data):
    return hashlib.sha256(data).hexdigest()


class FakeSink(object):
    """A destination QEMU listening for its incoming stream(s).

    ``die_after`` closes the connection after that many bytes (a QEMU
    killed mid-stream); ``hang`` accepts but reads nothing until released;
    clearing ``reading`` freezes it mid-stream until set again.
    """

    def __init__(self, directory, name, channels=1, die_after=None,
                 hang=False):
        self.path = os.path.join(directory, '%s.sock' % name)
        self.target = 'unix:%s' % self.path
        self.channels = channels
        self.die_after = die_after
        self.release = threading.Event()
        if not hang:
            self.release.set()
        self.reading = threading.Event()
        self.reading.set()
        self.received = [0] * channels
        self.progress = threading.Condition()
        self.digests = [None] * channels
        self.closed_early = threading.Event()
        self.done = threading.Event()
        self.accepted = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(self.path)
        self._listener.listen(channels)
        self._conns = []
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self):
        try:
            readers = []
            for index in range(self.channels):
                conn, _ = self._listener.accept()
                self._conns.append(conn)
                self.accepted.set()
                reader = threading.Thread(target=self._read,
                                          args=(index, conn))
                reader.start()
                readers.append(reader)
            for reader in readers:
                reader.join()
        except OSError:
            pass
        finally:
            self.done.set()

    def _read(self, index, conn):
        hasher = hashlib.sha256()
        buf = bytearray(MiB)
        self.release.wait()
        try:
            while True:
                limit = len(buf)
                if self.die_after is not None:
                    limit = min(limit, self.die_after - self.received[index])
                    if limit <= 0:
                        self.closed_early.set()
                        return
                self.reading.wait()
                n = conn.recv_into(buf, limit)
                if not n:
                    break
                hasher.update(memoryview(buf)[:n])
                with self.progress:
                    self.received[index] += n
                    self.progress.notify_all()
            self.digests[index] = hasher.hexdigest()
        except OSError:
            pass
        finally:
            conn.close()

    def wait_received(self, index, count):
        with self.progress:
            return self.progress.wait_for(
                lambda: self.received[index] >= count, WAIT)

    def close(self):
        self.release.set()
        self.reading.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(WAIT)


class FakeSource(object):
    """The source QEMU: writes each channel's data, main channel first.

    With ``pause_after`` the main channel stops after that many bytes
    until ``resume`` is set, so a test can act mid-stream. With
    ``in_step_with`` (sinks) it writes no further than IN_STEP ahead of
    what each of those sinks received, so that no scheduling delay can put
    them a lag limit apart.
    """

    def __init__(self, uri, channel_data, pause_after=None,
                 in_step_with=()):
        self.uri = uri
        self.channel_data = channel_data
        self.pause_after = pause_after
        self.in_step_with = in_step_with
        self.paused = threading.Event()
        self.resume = threading.Event()
        self.sent_all = threading.Event()
        self.error = None
        self._socks = []
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self):
        family, address = protocol.parse_target(self.uri)
        try:
            for _ in self.channel_data:
                sock = socket.socket(family)
                sock.connect(address)
                self._socks.append(sock)
            senders = [threading.Thread(target=self._send, args=(s, d, i))
                       for i, (s, d) in enumerate(zip(self._socks,
                                                      self.channel_data))]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join()
            if self.error is None:
                self.sent_all.set()
        except OSError as exc:
            self.error = exc

    def _send(self, sock, data, index):
        view = memoryview(data)
        try:
            for start in range(0, len(data), MiB):
                if index == 0 and start == self.pause_after:
                    self.paused.set()
                    self.resume.wait(WAIT)
                for sink in self.in_step_with:
                    if not sink.wait_received(index, start - IN_STEP):
                        raise TimeoutError('%s fell behind' % sink.path)
                sock.sendall(view[start:start + MiB])
        except OSError as exc:
            self.error = exc
        finally:
            sock.close()

    def join(self):
        self.resume.set()
        self._thread.join(WAIT)


def recv_until_closed(sock):
    """What a peer got before the other side hung up (or reset)."""
    received = b''
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return received
            received += data
    except ConnectionResetError:
        return received


def wait_until(predicate, timeout=WAIT):
    """Poll a condition that no event signals (progress counters)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class RelayTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        threads_before = set(threading.enumerate())
        fds_before = set(os.listdir('/proc/self/fd'))
        self.addCleanup(self._assert_nothing_leaked, threads_before,
                        fds_before)
        self.useFixture(fixtures.FakeLogger(level=logging.DEBUG))
        self.tempdir = tempfile.mkdtemp(prefix='relay-test-')
        self.addCleanup(shutil.rmtree, self.tempdir, True)
        self.secret = protocol.new_secret()
        self.dropped = {}
        self.sink_numbers = itertools.count()

    def _assert_nothing_leaked(self, threads_before, fds_before):
        leaked = [t for t in threading.enumerate()
                  if t not in threads_before and t.is_alive()]
        self.assertEqual([], leaked)
        fds = set(os.listdir('/proc/self/fd')) - fds_before
        leaked_fds = {}
        for fd in fds:
            try:
                leaked_fds[fd] = os.readlink('/proc/self/fd/%s' % fd)
            except OSError:
                pass
        self.assertEqual({}, leaked_fds)

    def make_destinations(self, count, tls=None, sink_options=None,
                          **agent_kwargs):
        sinks, agents = [], []
        for index in range(count):
            kwargs = (sink_options or {}).get(index, {})
            sink = FakeSink(self.tempdir, 'sink%d-%d' % (
                index, next(self.sink_numbers)), **kwargs)
            self.addCleanup(sink.close)
            agent = relay.DestinationAgent(self.secret, sink.target,
                                           tls=tls, name='dest%d' % index,
                                           **agent_kwargs)
            agent.start()
            self.addCleanup(agent.close)
            sinks.append(sink)
            agents.append(agent)
        return sinks, agents

    def make_relay(self, agents, **kwargs):
        kwargs.setdefault('on_drop', self.dropped.__setitem__)
        stream_relay = relay.StreamRelay(
            self.secret, [(a.name, a.address) for a in agents], **kwargs)
        self.addCleanup(stream_relay.close)
        stream_relay.start()
        return stream_relay

    def start_chain(self, count, data):
        sinks, agents = self.make_destinations(count)
        stream_relay = self.make_relay(agents, topology='chain')
        source = FakeSource(stream_relay.source_uri, [data],
                            pause_after=8 * MiB)
        self.assertTrue(source.paused.wait(WAIT))
        self.assertTrue(wait_until(
            lambda: all(s.received[0] == 8 * MiB for s in sinks)))
        return sinks, agents, stream_relay, source

    def check_survivors(self, sinks, agents, stream_relay, source, data,
                        lost):
        """Only agent ``lost`` was dropped; the others got everything."""
        source.resume.set()
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        self.assertEqual(['dest%d' % lost], list(self.dropped))
        progress = stream_relay.progress()
        self.assertEqual('failed', progress['dest%d' % lost].state)
        for index in range(len(sinks)):
            if index != lost:
                self.assert_delivered(sinks[index], agents[index], data,
                                      progress['dest%d' % index])

    def stream_everywhere(self, count, data, topology='star',
                          agent_kwargs=None, **relay_kwargs):
        """Stream ``data`` to ``count`` agents; check each got all of it."""
        sinks, agents = self.make_destinations(count, **(agent_kwargs or {}))
        stream_relay = self.make_relay(agents, topology=topology,
                                       **relay_kwargs)
        source = FakeSource(stream_relay.source_uri, [data])
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        progress = stream_relay.progress()
        for sink, agent in zip(sinks, agents):
            self.assert_delivered(sink, agent, data, progress[agent.name])
        return sinks, agents, stream_relay

    def assert_delivered(self, sink, agent, data, progress):
        self.assertTrue(sink.done.wait(WAIT))
        self.assertEqual([len(data)], sink.received)
        self.assertEqual([digest(data)], sink.digests)
        self.assertEqual('complete', agent.state)
        self.assertEqual(len(data), agent.bytes_received)
        self.assertEqual(len(data), agent.bytes_delivered)
        self.assertEqual('complete', progress.state)
        self.assertEqual(len(data), progress.bytes_sent)
        self.assertIsNone(progress.reason)


@ddt.ddt
class TestStreamDelivery(RelayTestCase):

    @ddt.data(*itertools.product((1, 2, 3), ('star', 'chain')))
    @ddt.unpack
    def test_every_sink_gets_the_stream(self, count, topology):
        data = make_data(64 * MiB, seed=count)
        sinks, agents = self.make_destinations(count)
        stream_relay = self.make_relay(agents, topology=topology)
        source = FakeSource(stream_relay.source_uri, [data])
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        self.assertIsNone(source.error)
        self.assertEqual(len(data), stream_relay.bytes_from_source)
        progress = stream_relay.progress()
        for sink, agent in zip(sinks, agents):
            self.assert_delivered(sink, agent, data, progress[agent.name])
        self.assertEqual({}, self.dropped)
        # A chain puts one copy on the source host's link, a star N.
        copies = count if topology == 'star' else 1
        self.assertEqual(copies * len(data),
                         stream_relay.bytes_to_destinations)
        stream_relay.close()
        for agent in agents:
            agent.close()

    def test_source_over_loopback_tcp(self):
        data = make_data(16 * MiB, seed=10)
        sinks, agents = self.make_destinations(1)
        stream_relay = self.make_relay(agents, listen='tcp:127.0.0.1:0')
        self.assertTrue(stream_relay.source_uri.startswith('tcp:127.0.0.1:'))
        source = FakeSource(stream_relay.source_uri, [data])
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        self.assert_delivered(sinks[0], agents[0], data,
                              stream_relay.progress()['dest0'])

    def _hold_for_the_leader(self, stream_relay, source, stall_timeout):
        """Enter the stop phase with the source paused mid-stream.

        Returns the leader and the bytes the relay had read by then (or a
        little after): a held destination may finish the send it had
        begun, of bytes read before, but start no other.
        """
        stream_relay._priority.stall_timeout = stall_timeout
        self.assertTrue(source.paused.wait(WAIT))
        leader = stream_relay.prioritize_leader()
        read_before = stream_relay.bytes_from_source
        self.assertIsNotNone(leader)
        self.assertIsNone(stream_relay.prioritize_leader())
        return leader, read_before

    def test_stop_phase_goes_to_the_leader_first(self):
        data = make_data(48 * MiB, seed=11)
        sinks, agents = self.make_destinations(3)
        stream_relay = self.make_relay(agents)
        snapshots = []
        priority = stream_relay._priority
        finished = priority.finished

        def snapshot(forwarder):
            # Taken as the leader's stream ends, before the others go on.
            if forwarder.destination == priority.leader:
                snapshots.append(stream_relay.progress())
            finished(forwarder)

        priority.finished = snapshot
        source = FakeSource(stream_relay.source_uri, [data],
                            pause_after=8 * MiB)
        leader, read_before = self._hold_for_the_leader(
            stream_relay, source, WAIT)
        source.resume.set()
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        self.assertEqual(1, len(snapshots))
        self.assertEqual(len(data), snapshots[0][leader].bytes_sent)
        for name, progress in snapshots[0].items():
            if name != leader:
                self.assertLessEqual(progress.bytes_sent, read_before, name)
        progress = stream_relay.progress()
        for sink, agent in zip(sinks, agents):
            self.assert_delivered(sink, agent, data, progress[agent.name])

    def test_a_leader_that_stops_taking_lets_the_others_go_on(self):
        data = make_data(48 * MiB, seed=13)
        sinks, agents = self.make_destinations(3)
        stream_relay = self.make_relay(agents)
        source = FakeSource(stream_relay.source_uri, [data],
                            pause_after=8 * MiB)
        leader, _ = self._hold_for_the_leader(stream_relay, source, 0.2)
        index = [a.name for a in agents].index(leader)
        # The leader's host freezes: its QEMU reads nothing, no reset.
        sinks[index].reading.clear()
        source.resume.set()
        others = [i for i in range(3) if i != index]
        for i in others:
            self.assertTrue(sinks[i].done.wait(WAIT))
        self.assertLess(sinks[index].received[0], len(data))
        self.assertNotEqual('complete', agents[index].state)
        sinks[index].reading.set()
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        progress = stream_relay.progress()
        for sink, agent in zip(sinks, agents):
            self.assert_delivered(sink, agent, data, progress[agent.name])
        self.assertEqual({}, self.dropped)

    @ddt.data(('chain', 3), ('star', 1))
    @ddt.unpack
    def test_nobody_goes_first_where_no_link_is_shared(self, topology,
                                                       count):
        data = make_data(8 * MiB, seed=12)
        sinks, agents = self.make_destinations(count)
        stream_relay = self.make_relay(agents, topology=topology)
        source = FakeSource(stream_relay.source_uri, [data],
                            pause_after=4 * MiB)
        self.assertTrue(source.paused.wait(WAIT))
        self.assertIsNone(stream_relay.prioritize_leader())
        source.resume.set()
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        progress = stream_relay.progress()
        for sink, agent in zip(sinks, agents):
            self.assert_delivered(sink, agent, data, progress[agent.name])


@ddt.ddt
class TestFailureIsolation(RelayTestCase):

    def assert_intact(self, stream_relay, sinks, agents, data, indexes):
        progress = stream_relay.progress()
        for index in indexes:
            self.assert_delivered(sinks[index], agents[index], data,
                                  progress[agents[index].name])

    @ddt.data('star', 'chain')
    def test_sink_dying_mid_stream_is_dropped(self, topology):
        data = make_data(32 * MiB, seed=3)
        sinks, agents = self.make_destinations(
            3, sink_options={1: {'die_after': 5 * MiB}})
        stream_relay = self.make_relay(agents, topology=topology)
        source = FakeSource(stream_relay.source_uri, [data])
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        self.assertTrue(source.sent_all.is_set())
        self.assertTrue(sinks[1].closed_early.is_set())
        self.assertEqual(['dest1'], list(self.dropped))
        self.assertEqual('failed', agents[1].state)
        self.assertIn('local QEMU', agents[1].reason)
        self.assertEqual('failed', stream_relay.progress()['dest1'].state)
        self.assertIn('local QEMU', stream_relay.progress()['dest1'].reason)
        self.assert_intact(stream_relay, sinks, agents, data, (0, 2))
        if topology == 'chain':
            # The dead QEMU's agent kept forwarding to the next one.
            self.assertEqual(len(data), agents[1].bytes_received)

    @ddt.data('star', 'chain')
    def test_drop_mid_stream(self, topology):
        data = make_data(32 * MiB, seed=4)
        sinks, agents = self.make_destinations(3)
        stream_relay = self.make_relay(agents, topology=topology)
        source = FakeSource(stream_relay.source_uri, [data],
                            pause_after=8 * MiB)
        self.assertTrue(source.paused.wait(WAIT))
        self.assertTrue(wait_until(
            lambda: all(s.received[0] == 8 * MiB for s in sinks)))
        stream_relay.drop('dest0', 'lost the election')
        self.assertEqual({'dest0': 'dropped: lost the election'},
                         self.dropped)
        self.assertTrue(wait_until(lambda: agents[0].state == 'failed'))
        source.resume.set()
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        self.assertIn('lost the election', agents[0].reason)
        self.assertTrue(sinks[0].done.wait(WAIT))
        self.assertLess(sinks[0].received[0], len(data))
        self.assert_intact(stream_relay, sinks, agents, data, (1, 2))

    def test_hung_destination_dropped_by_lag_without_blocking_source(self):
        data = make_data(96 * MiB, seed=5)
        sinks, agents = self.make_destinations(
            3, sink_options={2: {'hang': True}})
        stream_relay = self.make_relay(agents, lag_limit=LAG_LIMIT)
        source = FakeSource(stream_relay.source_uri, [data],
                            in_step_with=sinks[:2])
        self.assertTrue(source.sent_all.wait(WAIT))
        # The source finished while the hung QEMU had read nothing.
        self.assertEqual([0], sinks[2].received)
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        self.assertEqual(['dest2'], list(self.dropped))
        self.assertIn('behind the fastest destination', self.dropped['dest2'])
        self.assertIn('lag limit %d' % LAG_LIMIT, self.dropped['dest2'])
        self.assert_intact(stream_relay, sinks, agents, data, (0, 1))
        self.assertTrue(wait_until(lambda: agents[2].state == 'failed'))

    def test_hung_qemu_mid_chain_dropped_while_forwarding_goes_on(self):
        data = make_data(96 * MiB, seed=13)
        sinks, agents = self.make_destinations(
            3, sink_options={1: {'hang': True}})
        stream_relay = self.make_relay(agents, topology='chain',
                                       lag_limit=LAG_LIMIT)
        source = FakeSource(stream_relay.source_uri, [data],
                            in_step_with=(sinks[0], sinks[2]))
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        self.assertTrue(source.sent_all.is_set())
        self.assertEqual([0], sinks[1].received)
        self.assertEqual(['dest1'], list(self.dropped))
        self.assertIn('behind the fastest destination', self.dropped['dest1'])
        self.assertEqual(len(data), agents[1].bytes_received)
        self.assert_intact(stream_relay, sinks, agents, data, (0, 2))

    def test_target_not_listening(self):
        data = make_data(4 * MiB, seed=14)
        sinks, agents = self.make_destinations(2)
        sinks[1].close()
        os.unlink(sinks[1].path)
        agents[1].target_timeout = 0.1
        stream_relay = self.make_relay(agents)
        source = FakeSource(stream_relay.source_uri, [data])
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        self.assertIn('cannot connect to %s' % sinks[1].target,
                      self.dropped['dest1'])
        self.assert_intact(stream_relay, sinks, agents, data, (0,))

    @ddt.data('star', 'chain')
    def test_abort_fails_every_destination(self, topology):
        data = make_data(32 * MiB, seed=11)
        sinks, agents = self.make_destinations(2)
        stream_relay = self.make_relay(agents, topology=topology)
        source = FakeSource(stream_relay.source_uri, [data],
                            pause_after=8 * MiB)
        self.assertTrue(source.paused.wait(WAIT))
        stream_relay.abort('the source QEMU reported failure')
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        self.assertIsInstance(source.error, OSError)
        for sink, agent in zip(sinks, agents):
            self.assertTrue(sink.done.wait(WAIT))
            self.assertTrue(wait_until(lambda: agent.state == 'failed'))
            self.assertIn('the source QEMU reported failure', agent.reason)
            self.assertLess(sink.received[0], len(data))
        self.assertEqual({'dest0', 'dest1'}, set(self.dropped))
        for agent in agents:
            agent.close()
        for sink in sinks:
            sink.close()

    def test_every_destination_failing_closes_the_source(self):
        data = make_data(32 * MiB, seed=6)
        sinks, agents = self.make_destinations(
            2, sink_options={0: {'die_after': MiB}, 1: {'die_after': 2 * MiB}})
        stream_relay = self.make_relay(agents)
        source = FakeSource(stream_relay.source_uri, [data])
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        self.assertFalse(source.sent_all.is_set())
        self.assertIsInstance(source.error, OSError)
        self.assertEqual({'dest0', 'dest1'}, set(self.dropped))
        self.assertEqual([], stream_relay.live_destinations())


class TestZeroCopy(RelayTestCase):
    """Where no byte must stay buffered, the stream never enters Python."""

    def setUp(self):
        super().setUp()
        self.spliced = collections.Counter()
        drain = zerocopy.Splicer.drain
        splice_out = zerocopy._splice_out

        def counting_drain(splicer, sock, count, timeout=None):
            self.spliced[sock.family] += count
            return drain(splicer, sock, count, timeout)

        def counting_splice_out(read_fd, sock, count, timeout):
            self.spliced[sock.family] += count
            return splice_out(read_fd, sock, count, timeout)

        push = zerocopy.Lane.push

        def counting_push(lane):
            # The producer splices rounds to a waiting consumer's socket.
            sock = lane.sock
            count = push(lane)
            self.spliced[sock.family] += count
            return count

        self.useFixture(fixtures.MonkeyPatch(
            'nova_multidest.dataplane.zerocopy.Splicer.drain',
            counting_drain))
        self.useFixture(fixtures.MonkeyPatch(
            'nova_multidest.dataplane.zerocopy._splice_out',
            counting_splice_out))
        self.useFixture(fixtures.MonkeyPatch(
            'nova_multidest.dataplane.zerocopy.Lane.push', counting_push))

    def _stream(self, data, **source_options):
        sinks, agents = self.make_destinations(1)
        stream_relay = self.make_relay(agents)
        source = FakeSource(stream_relay.source_uri, [data],
                            **source_options)
        return sinks[0], agents[0], stream_relay, source

    def test_relay_and_agent_splice(self):
        data = make_data(48 * MiB, seed=30)
        sink, agent, stream_relay, source = self._stream(data)
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        self.assert_delivered(sink, agent, data,
                              stream_relay.progress()['dest0'])
        self.assertEqual(len(data), stream_relay.bytes_from_source)
        # At most the chunk read before the source was known is copied.
        self.assertGreaterEqual(self.spliced[socket.AF_INET],
                                len(data) - MiB)
        self.assertGreaterEqual(self.spliced[socket.AF_UNIX],
                                len(data) - MiB)

    def test_copies_when_splice_is_refused(self):
        def refuse(*args, **kwargs):
            raise OSError(errno.EINVAL, 'Invalid argument')

        self.useFixture(fixtures.MonkeyPatch(
            'nova_multidest.dataplane.zerocopy.os.splice', refuse))
        data = make_data(16 * MiB, seed=31)
        sink, agent, stream_relay, source = self._stream(data)
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        self.assert_delivered(sink, agent, data,
                              stream_relay.progress()['dest0'])
        self.assertEqual({}, dict(+self.spliced))

    def test_fanout_copies_when_splice_is_refused(self):
        def refuse(*args, **kwargs):
            raise OSError(errno.EINVAL, 'Invalid argument')

        self.useFixture(fixtures.MonkeyPatch(
            'nova_multidest.dataplane.zerocopy.os.splice', refuse))
        data = make_data(16 * MiB, seed=39)
        for topology in ('star', 'chain'):
            sinks, agents, stream_relay = self.stream_everywhere(
                2, data, topology)
        self.assertEqual({}, dict(+self.spliced))

    def test_sink_dying(self):
        data = make_data(32 * MiB, seed=32)
        sinks, agents = self.make_destinations(
            1, sink_options={0: {'die_after': 5 * MiB}})
        stream_relay = self.make_relay(agents)
        source = FakeSource(stream_relay.source_uri, [data])
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        self.assertTrue(sinks[0].closed_early.is_set())
        self.assertIsInstance(source.error, OSError)
        self.assertEqual(['dest0'], list(self.dropped))
        self.assertEqual('failed', agents[0].state)
        self.assertIn('local QEMU', agents[0].reason)

    def test_drop_mid_stream(self):
        data = make_data(32 * MiB, seed=33)
        sink, agent, stream_relay, source = self._stream(
            data, pause_after=8 * MiB)
        self.assertTrue(source.paused.wait(WAIT))
        self.assertTrue(wait_until(lambda: sink.received[0] == 8 * MiB))
        self.assertEqual(8 * MiB, stream_relay.progress()['dest0'].bytes_sent)
        stream_relay.drop('dest0', 'lost the election')
        self.assertTrue(wait_until(lambda: agent.state == 'failed'))
        source.resume.set()
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        # Its agent may hear of the drop or of the stream it ended first.
        self.assertEqual({'dest0': 'dropped: lost the election'},
                         self.dropped)
        self.assertTrue(sink.done.wait(WAIT))
        self.assertLess(sink.received[0], len(data))

    def test_abort_mid_stream(self):
        data = make_data(32 * MiB, seed=34)
        sink, agent, stream_relay, source = self._stream(
            data, pause_after=8 * MiB)
        self.assertTrue(source.paused.wait(WAIT))
        self.assertTrue(wait_until(lambda: sink.received[0] == 8 * MiB))
        stream_relay.abort('the source QEMU reported failure')
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        self.assertTrue(wait_until(lambda: agent.state == 'failed'))
        self.assertIn('the source QEMU reported failure', agent.reason)
        self.assertTrue(sink.done.wait(WAIT))
        self.assertLess(sink.received[0], len(data))

    def test_star_fans_out_through_pipes(self):
        data = make_data(48 * MiB, seed=37)
        sinks, agents, stream_relay = self.stream_everywhere(3, data)
        # Every copy to an agent and from an agent to its QEMU is
        # spliced, but for rounds a busy destination got by copy.
        self.assertGreater(self.spliced[socket.AF_INET], len(data))
        self.assertGreaterEqual(self.spliced[socket.AF_UNIX],
                                3 * (len(data) - MiB))

    def test_chain_hops_feed_their_qemu_and_forward_through_pipes(self):
        data = make_data(48 * MiB, seed=38)
        self.stream_everywhere(3, data, 'chain')
        # Relay to dest0, dest0 to dest1, dest1 to dest2; and every QEMU.
        self.assertGreater(self.spliced[socket.AF_INET], 3 * len(data) // 2)
        self.assertGreater(self.spliced[socket.AF_UNIX], 3 * len(data) // 2)

    def test_last_chain_hop_splices_and_survives_repair(self):
        # A repair resends from the retained buffer; the last hop resumes
        # from what it counted.
        data = make_data(48 * MiB, seed=36)
        sinks, agents, stream_relay, source = self.start_chain(3, data)
        agents[1].close()
        self.check_survivors(sinks, agents, stream_relay, source, data, 1)
        self.assertGreater(self.spliced[socket.AF_INET], len(data))
        self.assertGreater(self.spliced[socket.AF_UNIX], len(data))

    def test_only_hosts_that_can_repair_keep_a_copy(self):
        # A kept copy serves one repair: the hop after a dead next hop
        # resumes from it. The last forwarding host has no such hop.
        data = make_data(24 * MiB, seed=39)
        _, agents, stream_relay = self.stream_everywhere(3, data, 'chain')
        self.assertEqual(len(data),
                         stream_relay._channels[0].fanout.stored_bytes)
        self.assertEqual(len(data), agents[0]._channels[0].fanout.stored_bytes)
        # Only rounds its QEMU's pipe had no room for, if any.
        self.assertLess(agents[1]._channels[0].fanout.stored_bytes,
                        len(data))

    def test_multifd(self):
        channel_data = [make_data(size, seed=35 + index) for index, size
                        in enumerate((16 * MiB, 8 * MiB, 8 * MiB))]
        sinks, agents = self.make_destinations(
            1, sink_options={0: {'channels': 3}})
        stream_relay = self.make_relay(agents)
        source = FakeSource(stream_relay.source_uri, channel_data)
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        self.assertTrue(sinks[0].done.wait(WAIT))
        self.assertEqual([digest(d) for d in channel_data], sinks[0].digests)
        self.assertEqual('complete', agents[0].state)
        self.assertGreaterEqual(self.spliced[socket.AF_UNIX],
                                sum(len(d) for d in channel_data) - 3 * MiB)


AGENT_PROCESS = """
import sys
from nova_multidest.dataplane import relay
agent = relay.DestinationAgent(bytes.fromhex(sys.argv[1]), sys.argv[2],
                               name=sys.argv[3])
print(agent.start()[1], flush=True)
sys.stdin.read()
"""


@ddt.ddt
class TestChainRepair(RelayTestCase):

    def _chain_with_middle_process(self, data, **relay_kwargs):
        """A 3-chain whose middle agent runs in a process of its own."""
        sinks, agents = self.make_destinations(3)
        agents[1].close()
        middle = subprocess.Popen(
            [sys.executable, '-c', AGENT_PROCESS, self.secret.hex(),
             sinks[1].target, 'dest1'],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                os.path.abspath(__file__)))))
        self.addCleanup(middle.stdout.close)
        self.addCleanup(middle.stdin.close)
        self.addCleanup(middle.wait)
        self.addCleanup(middle.kill)
        port = int(middle.stdout.readline())
        destinations = [('dest0', agents[0].address),
                        ('dest1', ('127.0.0.1', port)),
                        ('dest2', agents[2].address)]
        stream_relay = relay.StreamRelay(
            self.secret, destinations, topology='chain',
            on_drop=self.dropped.__setitem__, **relay_kwargs)
        self.addCleanup(stream_relay.close)
        stream_relay.start()
        source = FakeSource(stream_relay.source_uri, [data],
                            pause_after=8 * MiB)
        self.assertTrue(source.paused.wait(WAIT))
        self.assertTrue(wait_until(
            lambda: all(s.received[0] == 8 * MiB for s in sinks)))
        return sinks, agents, middle, stream_relay, source

    def _check_bypassed(self, sinks, agents, stream_relay, source, data):
        self.check_survivors(sinks, agents, stream_relay, source, data, 1)

    def test_agent_process_sigkilled_mid_chain(self):
        data = make_data(32 * MiB, seed=12)
        sinks, agents, middle, stream_relay, source = (
            self._chain_with_middle_process(data))
        middle.kill()
        middle.wait()
        self._check_bypassed(sinks, agents, stream_relay, source, data)

    def test_agent_process_frozen_mid_chain(self):
        # A frozen agent keeps its connections open: only the stall
        # timeout tells, and the repaired hop must take over from it.
        data = make_data(32 * MiB, seed=15)
        sinks, agents, middle, stream_relay, source = (
            self._chain_with_middle_process(data, stall_timeout=3.0))
        os.kill(middle.pid, signal.SIGSTOP)
        self._check_bypassed(sinks, agents, stream_relay, source, data)
        # Its upstream's send or the relay's status read noticed first.
        self.assertRegex(self.dropped['dest1'],
                         'timed out|sent no status for 3.0s')

    @ddt.data((3, 1), (3, 0), (2, 0), (3, 2))
    @ddt.unpack
    def test_a_killed_agent_is_bypassed(self, count, lost):
        # In the middle and first (the relay repairs), or last: nothing
        # follows it, so nothing is repaired and nothing else is lost.
        data = make_data(32 * MiB, seed=count * 3 + lost)
        sinks, agents, stream_relay, source = self.start_chain(count, data)
        agents[lost].close()
        self.check_survivors(sinks, agents, stream_relay, source, data,
                             lost)

    @ddt.data(0, 1)
    def test_agent_lost_before_the_source_starts(self, lost):
        # Nothing flows before the source starts, so no send finds the
        # hop gone: the relay, told by the agent's status, repairs around
        # it (first hop) or tells the agents to (middle hop), well within
        # the repair timeout the agent after it waits for.
        data = make_data(16 * MiB, seed=16 + lost)
        sinks, agents = self.make_destinations(3, repair_timeout=2.0)
        stream_relay = self.make_relay(agents, topology='chain')
        after = agents[lost + 1]
        self.assertTrue(wait_until(lambda: 0 in after._channels))
        upstream = after._channels[0].generation
        agents[lost].close()
        self.assertTrue(wait_until(
            lambda: after.state == 'failed' or
            after._channels[0].generation != upstream, timeout=WAIT))
        self.assertNotEqual('failed', after.state, after.reason)
        source = FakeSource(stream_relay.source_uri, [data])
        self.check_survivors(sinks, agents, stream_relay, source, data,
                             lost)

    def test_downstream_dropped_when_no_hop_is_left(self):
        data = make_data(32 * MiB, seed=9)
        sinks, agents, stream_relay, source = self.start_chain(3, data)
        agents[1].close()
        agents[2].close()
        source.resume.set()
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        self.assertEqual({'dest1', 'dest2'}, set(self.dropped))
        progress = stream_relay.progress()
        self.assert_delivered(sinks[0], agents[0], data, progress['dest0'])


@ddt.ddt
class TestMultifd(RelayTestCase):
    """Channels reach each destination QEMU in the source's order."""

    @ddt.data('star', 'chain')
    def test_channels_arrive_in_order(self, topology):
        channel_data = [make_data(size, seed=20 + index) for index, size
                        in enumerate((24 * MiB, 8 * MiB, 8 * MiB, 8 * MiB))]
        sinks, agents = self.make_destinations(
            2, sink_options={0: {'channels': 4}, 1: {'channels': 4}})
        stream_relay = self.make_relay(agents, topology=topology)
        source = FakeSource(stream_relay.source_uri, channel_data)
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        self.assertTrue(source.sent_all.is_set())
        total = sum(len(d) for d in channel_data)
        self.assertEqual(total, stream_relay.bytes_from_source)
        progress = stream_relay.progress()
        for sink, agent in zip(sinks, agents):
            self.assertTrue(sink.done.wait(WAIT))
            self.assertEqual([len(d) for d in channel_data], sink.received)
            self.assertEqual([digest(d) for d in channel_data], sink.digests)
            self.assertEqual('complete', agent.state)
            self.assertEqual(total, progress[agent.name].bytes_sent)
            self.assertEqual(total, progress[agent.name].bytes_delivered)


class TestAuthentication(RelayTestCase):

    def test_relay_with_wrong_secret_reaches_nobody(self):
        sinks, agents = self.make_destinations(2)
        stray = relay.StreamRelay(protocol.new_secret(),
                                  [(a.name, a.address) for a in agents])
        self.addCleanup(stray.close)
        exc = self.assertRaises(exceptions.AllDestinationsFailed, stray.start)
        self.assertIn('does not hold the migration secret', str(exc))
        for sink, agent in zip(sinks, agents):
            self.assertEqual('waiting', agent.state)
            self.assertEqual(0, agent.bytes_received)
            self.assertFalse(sink.accepted.is_set())

    def test_stray_stream_cannot_be_injected(self):
        data = make_data(16 * MiB, seed=30)
        sinks, agents = self.make_destinations(1)
        sock = socket.create_connection(agents[0].address)
        self.addCleanup(sock.close)
        header = {'kind': 'stream', 'channel': 0, 'chain': []}
        self.assertRaises(exceptions.AuthenticationFailed,
                          protocol.client_handshake, sock,
                          protocol.new_secret(), header)
        # A stray that skips the check and just writes frames is cut off
        # before anything reaches QEMU.
        raw = socket.create_connection(agents[0].address)
        self.addCleanup(raw.close)
        raw.sendall(protocol.FRAME_HEADER.pack(protocol.FRAME_DATA, 4) +
                    b'evil' * 100)
        self.assertEqual(b'', recv_until_closed(raw))
        self.assertEqual('waiting', agents[0].state)
        stream_relay = self.make_relay(agents)
        source = FakeSource(stream_relay.source_uri, [data])
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        self.assert_delivered(sinks[0], agents[0], data,
                              stream_relay.progress()['dest0'])

    def test_impostor_agent_receives_nothing(self):
        data = make_data(16 * MiB, seed=31)
        sinks, agents = self.make_destinations(1)
        impostor = socket.socket()
        impostor.bind(('127.0.0.1', 0))
        impostor.listen(4)
        self.addCleanup(impostor.close)
        impostor_errors = []

        def impostor_serve():
            conn, _ = impostor.accept()
            try:
                protocol.server_handshake(conn, protocol.new_secret(),
                                          lambda header: {})
            except exceptions.AuthenticationFailed as exc:
                impostor_errors.append(exc)
        thread = threading.Thread(target=impostor_serve)
        thread.start()
        self.addCleanup(thread.join, WAIT)
        stream_relay = relay.StreamRelay(
            self.secret, [('impostor', impostor.getsockname()),
                          ('dest0', agents[0].address)],
            on_drop=self.dropped.__setitem__)
        self.addCleanup(stream_relay.close)
        stream_relay.start()
        self.assertIn('does not hold the migration secret',
                      self.dropped['impostor'])
        source = FakeSource(stream_relay.source_uri, [data])
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        thread.join(WAIT)
        # The relay hung up before sending any header, let alone data.
        self.assertEqual(1, len(impostor_errors))
        self.assertIn('connection closed', str(impostor_errors[0]))
        self.assert_delivered(sinks[0], agents[0], data,
                              stream_relay.progress()['dest0'])


@ddt.ddt
class TestTLS(RelayTestCase):

    def setUp(self):
        super().setUp()
        cert = os.path.join(self.tempdir, 'cert.pem')
        key = os.path.join(self.tempdir, 'key.pem')
        subprocess.run(
            ['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
             '-keyout', key, '-out', cert, '-days', '1',
             '-subj', '/CN=localhost',
             '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'],
            check=True, capture_output=True)
        self.server_tls, self.client_tls = protocol.make_tls_contexts(
            cert, key, cert)

    @ddt.data('star', 'chain')
    def test_stream_over_tls(self, topology):
        data = make_data(32 * MiB, seed=40)
        self.stream_everywhere(
            2, data, topology, tls=self.client_tls,
            agent_kwargs={'tls': self.server_tls,
                          'forward_tls': self.client_tls})

    def test_plain_relay_cannot_reach_tls_agent(self):
        sinks, agents = self.make_destinations(1, tls=self.server_tls)
        stray = relay.StreamRelay(self.secret,
                                  [(a.name, a.address) for a in agents])
        self.addCleanup(stray.close)
        exc = self.assertRaises(exceptions.AllDestinationsFailed, stray.start)
        self.assertIn('TLS', str(exc))
        self.assertEqual('waiting', agents[0].state)

    def test_chain_agent_without_forward_tls_is_refused(self):
        data = make_data(8 * MiB, seed=41)
        sinks, agents = self.make_destinations(2, tls=self.server_tls)
        stream_relay = self.make_relay(agents, topology='chain',
                                       tls=self.client_tls)
        self.assertIn('no client TLS context', self.dropped['dest0'])
        source = FakeSource(stream_relay.source_uri, [data])
        self.assertTrue(stream_relay.wait_finished(WAIT))
        source.join()
        self.assert_delivered(sinks[1], agents[1], data,
                              stream_relay.progress()['dest1'])
