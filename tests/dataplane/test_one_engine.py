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

"""The demo and Nova's compute endpoint stream through one engine.

Both run a warm-up migration of a real guest that dirties its memory
(raw QEMU for the demo, libvirt domains for the endpoint) while every
source stream records what it asked of its source. Both must take the
same steps of dataplane/source_stream.py: start at the probe bandwidth
with pre-copy held, go to full bandwidth once QEMU measured its own, and
release the real downtime limit at the switch-over.
"""

import io

import fixtures

from nova import objects

from nova_multidest.cmd import demo
from nova_multidest.dataplane import guest as guest_image
from nova_multidest.dataplane import protocol
from nova_multidest.dataplane import source_stream
from nova_multidest import vocabulary
from tests.dataplane import test_libvirt_endpoint

MiB = 1 << 20
# A bandwidth cap a CPU-starved guest still out-dirties at a 1 ms limit,
# so that QEMU cannot complete on its own before the switch-over.
BANDWIDTH_MB = 32
WARM_UP_PATH = [('probe', 'hold'), ('full',), ('full', 'limit')]


def setUpModule():
    objects.register_all()


def step(parameters):
    """What one set_parameters call meant, whatever the numbers."""
    meaning = []
    bandwidth = parameters.get('max_bandwidth')
    if bandwidth is not None:
        meaning.append('probe' if bandwidth == source_stream.PROBE_BANDWIDTH
                       else 'full')
    limit = parameters.get('downtime_limit_ms')
    if limit is not None:
        meaning.append({source_stream.HOLD_DOWNTIME_MS: 'hold',
                        source_stream.MAX_DOWNTIME_MS: 'forced'}.get(
                            limit, 'limit'))
    return tuple(meaning)


class OneEngineTest(test_libvirt_endpoint.EndpointOverLibvirtBase):

    def guest(self):
        return guest_image.DirtyingGuest(pages_per_tick=0)

    def setUp(self):
        super().setUp()
        # The switch-over waits for the exit condition, however loaded
        # the machine: a forced one would be another path.
        self.flags(max_bandwidth_mb=BANDWIDTH_MB, switch_over_timeout=600)
        self.streams = []
        real_start = source_stream.SourceStream.start
        streams = self.streams

        def start(stream, spawn):
            asked = []
            set_parameters = stream.source.set_parameters

            def record(**parameters):
                asked.append(step(parameters))
                return set_parameters(**parameters)

            stream.source.set_parameters = record
            streams.append((stream, asked))
            return real_start(stream, spawn)

        self.useFixture(fixtures.MockPatchObject(
            source_stream.SourceStream, 'start', start))

    def run_demo(self):
        out = io.StringIO()
        args = demo.parse_args(['--warm-up', '--no-kill', '--destinations',
                                '2', '--memory', '64', '--bandwidth',
                                str(BANDWIDTH_MB)])
        migration = demo.Demo(args, out=out)
        try:
            status = migration.run()
        finally:
            migration.cleanup()
        self.assertEqual(0, status, out.getvalue())

    def run_endpoint(self):
        secret = protocol.new_secret().hex()
        destinations = self.prepare_destinations(secret)
        self.start_stream(destinations, secret, vocabulary.Topology.STAR,
                          warm_up=True)
        # Nova's force complete: the engine waits for the exit condition.
        self.assertTrue(self.source.switch_over('ctxt', self.instance))
        for host, endpoint in self.dests.items():
            self.assertEqual(
                vocabulary.WaitOutcome.COMPLETED,
                endpoint.wait_destination('ctxt', self.instance,
                                          self.migrations[host],
                                          test_libvirt_endpoint.
                                          STREAM_TIMEOUT))

    def test_demo_and_endpoint_take_the_same_warm_up_path(self):
        self.run_demo()
        self.run_endpoint()
        self.assertEqual(2, len(self.streams))
        (demo_stream, demo_path), (nova_stream, nova_path) = self.streams
        self.assertEqual('source', demo_stream.source.name)
        self.assertEqual(self.domain_name, nova_stream.source.name)
        self.assertTrue(nova_stream.wait(test_libvirt_endpoint.
                                         STREAM_TIMEOUT))
        self.assertEqual(WARM_UP_PATH, demo_path)
        self.assertEqual(WARM_UP_PATH, nova_path)
