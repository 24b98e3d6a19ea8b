"""The stream relay against fake QEMU sources and sinks (no QEMU needed).

A fake source writes seeded pseudo-random bytes into the relay; each fake
destination QEMU is a unix socket that hashes what it receives. A live
destination must get exactly the source's bytes; a failed one must be
dropped without disturbing the others or blocking the source.
"""

import hashlib
import os
import random
import shutil
import socket
import tempfile
import threading

import testtools

from nova_multidest.dataplane import protocol
from nova_multidest.dataplane import relay

MiB = 2**20
WAIT = 30


def make_data(size, seed):
    return random.Random(seed).randbytes(size)


def digest(data):
    return hashlib.sha256(data).hexdigest()


class FakeSink(object):
    """A destination QEMU listening for its incoming stream(s).

    ``die_after`` closes the connection after that many bytes (a QEMU
    killed mid-stream); ``hang`` accepts but reads nothing until released.
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
        self.received = [0] * channels
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
                n = conn.recv_into(buf, limit)
                if not n:
                    break
                hasher.update(memoryview(buf)[:n])
                self.received[index] += n
            self.digests[index] = hasher.hexdigest()
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.release.set()
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
    """The source QEMU: writes each channel's data, main channel first."""

    def __init__(self, uri, channel_data):
        self.uri = uri
        self.channel_data = channel_data
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
            senders = [threading.Thread(target=self._send, args=(s, d))
                       for s, d in zip(self._socks, self.channel_data)]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join()
            if self.error is None:
                self.sent_all.set()
        except OSError as exc:
            self.error = exc

    def _send(self, sock, data):
        view = memoryview(data)
        try:
            for start in range(0, len(data), MiB):
                sock.sendall(view[start:start + MiB])
        except OSError as exc:
            self.error = exc
        finally:
            sock.close()

    def join(self):
        self._thread.join(WAIT)


class RelayTestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        threads_before = set(threading.enumerate())
        self.addCleanup(self._assert_no_leaked_threads, threads_before)
        self.tempdir = tempfile.mkdtemp(prefix='relay-test-')
        self.addCleanup(shutil.rmtree, self.tempdir, True)
        self.secret = protocol.new_secret()
        self.dropped = {}

    def _assert_no_leaked_threads(self, before):
        leaked = [t for t in threading.enumerate()
                  if t not in before and t.is_alive()]
        self.assertEqual([], leaked)

    def make_destinations(self, count, tls=None, **sink_kwargs):
        sinks, agents = [], []
        for index in range(count):
            kwargs = sink_kwargs.get(index, {})
            sink = FakeSink(self.tempdir, 'sink%d' % index, **kwargs)
            self.addCleanup(sink.close)
            agent = relay.DestinationAgent(self.secret, sink.target,
                                           tls=tls, name='dest%d' % index)
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


class TestStreamDelivery(RelayTestCase):

    def _check_every_sink_gets_the_stream(self, count, topology):
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
        stream_relay.close()
        for agent in agents:
            agent.close()

    def test_star_one(self):
        self._check_every_sink_gets_the_stream(1, 'star')

    def test_star_two(self):
        self._check_every_sink_gets_the_stream(2, 'star')

    def test_star_three(self):
        self._check_every_sink_gets_the_stream(3, 'star')

    def test_chain_one(self):
        self._check_every_sink_gets_the_stream(1, 'chain')

    def test_chain_two(self):
        self._check_every_sink_gets_the_stream(2, 'chain')

    def test_chain_three(self):
        self._check_every_sink_gets_the_stream(3, 'chain')
