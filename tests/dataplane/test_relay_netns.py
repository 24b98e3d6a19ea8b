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

"""The relay between network namespaces: real links, shaped with tc.

Loopback hides what matters between hosts: link rates and hosts that
vanish without a reset. Here the relay and each agent run in their own
network namespace, joined by a bridge, with every host's uplink shaped to
one rate. The fake source and sinks stay in the test process: they talk
to the relay and agents over unix sockets, which namespaces do not split.
"""

import json
import os
import subprocess
import sys
import time
import uuid

import fixtures

from tests.dataplane import test_relay

MiB = test_relay.MiB
TOP_DIR = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
RATE_MBIT = 200

AGENT = """
import sys
from nova_multidest.dataplane import protocol, relay
protocol.DEAD_PEER_TIMEOUT = 3
agent = relay.DestinationAgent(bytes.fromhex(sys.argv[1]), sys.argv[2],
                               listen=(sys.argv[3], 0), name=sys.argv[4])
print(agent.start()[1], flush=True)
sys.stdin.read()
agent.close()
"""

RELAY = """
import json, sys
from nova_multidest.dataplane import protocol, relay
protocol.DEAD_PEER_TIMEOUT = 3
stream_relay = relay.StreamRelay(
    bytes.fromhex(sys.argv[1]), json.loads(sys.argv[2]), topology=sys.argv[3],
    lag_limit=1024 * 2**20)
stream_relay.start()
print(stream_relay.source_uri, flush=True)
finished = stream_relay.wait_finished(120)
print(json.dumps({
    'finished': finished,
    'to_destinations': stream_relay.bytes_to_destinations,
    'progress': {n: p._asdict()
                 for n, p in stream_relay.progress().items()}}), flush=True)
sys.stdin.read()
stream_relay.close()
"""


def run(*args):
    subprocess.run(args, check=True, capture_output=True)


class Hosts(fixtures.Fixture):
    """Network namespaces on one bridge, each uplink shaped to a rate."""

    def __init__(self, count, rate_mbit):
        super().__init__()
        self.count = count
        self.rate_mbit = rate_mbit

    def _setUp(self):
        tag = uuid.uuid4().hex[:6]
        self.bridge_ns = 'md-br-%s' % tag
        run('ip', 'netns', 'add', self.bridge_ns)
        self.addCleanup(run, 'ip', 'netns', 'del', self.bridge_ns)
        run('ip', '-n', self.bridge_ns, 'link', 'add', 'br0', 'type',
            'bridge')
        run('ip', '-n', self.bridge_ns, 'link', 'set', 'br0', 'up')
        self.hosts = []
        for index in range(self.count):
            ns = 'md-h%d-%s' % (index, tag)
            address = '10.77.0.%d' % (index + 1)
            run('ip', 'netns', 'add', ns)
            self.addCleanup(run, 'ip', 'netns', 'del', ns)
            run('ip', 'link', 'add', 'mdh%d%s' % (index, tag), 'netns', ns,
                'type', 'veth', 'peer', 'name', 'mdb%d%s' % (index, tag),
                'netns', self.bridge_ns)
            run('ip', '-n', ns, 'link', 'set', 'mdh%d%s' % (index, tag),
                'name', 'eth0')
            run('ip', '-n', ns, 'addr', 'add', address + '/24', 'dev', 'eth0')
            run('ip', '-n', ns, 'link', 'set', 'eth0', 'up')
            run('ip', '-n', ns, 'link', 'set', 'lo', 'up')
            run('ip', '-n', self.bridge_ns, 'link', 'set',
                'mdb%d%s' % (index, tag), 'master', 'br0', 'up')
            run('ip', 'netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev',
                'eth0', 'root', 'tbf', 'rate', '%dmbit' % self.rate_mbit,
                'burst', '256kb', 'latency', '100ms')
            self.hosts.append((ns, address))

    def cut(self, index):
        """The host vanishes: its link goes down, nothing is reset."""
        ns, _ = self.hosts[index]
        run('ip', '-n', ns, 'link', 'set', 'eth0', 'down')

    def spawn(self, index, script, *args):
        ns, _ = self.hosts[index]
        proc = subprocess.Popen(
            ['ip', 'netns', 'exec', ns, sys.executable, '-c', script] +
            list(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            cwd=TOP_DIR, text=True)
        self.addCleanup(proc.stdout.close)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        self.addCleanup(proc.stdin.close)
        return proc


class TestRelayBetweenHosts(test_relay.RelayTestCase):

    def start(self, topology, destinations, rate_mbit=RATE_MBIT):
        hosts = self.useFixture(Hosts(destinations + 1, rate_mbit))
        secret = self.secret.hex()
        sinks = []
        addresses = []
        for index in range(destinations):
            sink = test_relay.FakeSink(self.tempdir, 'sink%d-%d' % (
                index, next(self.sink_numbers)))
            self.addCleanup(sink.close)
            agent = hosts.spawn(index + 1, AGENT, secret, sink.target,
                                hosts.hosts[index + 1][1], 'dest%d' % index)
            addresses.append(('dest%d' % index,
                              (hosts.hosts[index + 1][1],
                               int(agent.stdout.readline()))))
            sinks.append(sink)
        self.relay_process = hosts.spawn(0, RELAY, secret,
                                         json.dumps(addresses), topology)
        source_uri = self.relay_process.stdout.readline().strip()
        return hosts, sinks, source_uri

    def finish(self):
        return json.loads(self.relay_process.stdout.readline())

    def _timed_transfer(self, topology, data):
        hosts, sinks, source_uri = self.start(topology, 2)
        began = time.monotonic()
        source = test_relay.FakeSource(source_uri, [data])
        report = self.finish()
        elapsed = time.monotonic() - began
        source.join()
        self.assertTrue(report['finished'])
        for index, sink in enumerate(sinks):
            self.assertTrue(sink.done.wait(test_relay.WAIT))
            self.assertEqual([test_relay.digest(data)], sink.digests)
            self.assertEqual('complete',
                             report['progress']['dest%d' % index]['state'])
        return elapsed, report['to_destinations']

    def test_chain_puts_one_copy_on_the_source_link(self):
        data = test_relay.make_data(16 * MiB, seed=50)
        star_time, star_bytes = self._timed_transfer('star', data)
        chain_time, chain_bytes = self._timed_transfer('chain', data)
        self.assertEqual(2 * len(data), star_bytes)
        self.assertEqual(len(data), chain_bytes)
        # One copy at the link rate takes 16 MiB / 200 Mbit/s = 0.67 s.
        one_copy = len(data) * 8 / (RATE_MBIT * 1e6)
        self.assertGreater(star_time, 1.8 * one_copy)
        self.assertLess(chain_time, 0.8 * star_time)

    def test_vanished_host_is_dropped(self):
        data = test_relay.make_data(32 * MiB, seed=51)
        hosts, sinks, source_uri = self.start('star', 2)
        source = test_relay.FakeSource(source_uri, [data],
                                       pause_after=4 * MiB)
        self.assertTrue(source.paused.wait(test_relay.WAIT))
        self.assertTrue(test_relay.wait_until(
            lambda: all(s.received[0] == 4 * MiB for s in sinks)))
        hosts.cut(2)
        source.resume.set()
        report = self.finish()
        source.join()
        self.assertTrue(report['finished'])
        self.assertEqual('failed', report['progress']['dest1']['state'])
        self.assertEqual('complete', report['progress']['dest0']['state'])
        self.assertTrue(sinks[0].done.wait(test_relay.WAIT))
        self.assertEqual([test_relay.digest(data)], sinks[0].digests)
        self.assertLess(sinks[1].received[0], len(data))
