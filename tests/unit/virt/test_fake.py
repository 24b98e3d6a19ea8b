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

"""The fake hypervisor extension that Nova-level tests drive."""

import threading

import testtools

from nova_multidest.dataplane import source_stream
from nova_multidest import exceptions
from nova_multidest.virt.hypervisors import fake
from nova_multidest import vocabulary

SECRET = b's' * 32
DOMAIN_XML = ("<domain><name>instance-1</name><uuid>u-1</uuid>"
              "<memory unit='KiB'>4096</memory></domain>")
RUNNING, PAUSED = 1, 3


class StubDomain(object):
    """The calls the fake makes on a (fake) libvirt domain."""

    def __init__(self, conn, xml, state):
        self.conn = conn
        self.xml = xml
        self.state = state

    def name(self):
        return 'instance-1'

    def XMLDesc(self, flags):
        return self.xml

    def info(self):
        return [self.state, 4096, 4096, 1, 0]

    def suspend(self):
        self.state = PAUSED

    def resume(self):
        self.state = RUNNING

    def destroy(self):
        self.state = 5

    def undefine(self):
        self.conn.domains.remove(self)


class StubConnection(object):

    def __init__(self, hostname='host1'):
        self.domains = []
        self.hostname = hostname

    def getHostname(self):
        return self.hostname

    def listAllDomains(self, flags):
        return list(self.domains)

    def createXML(self, xml, flags):
        domain = StubDomain(self, xml, RUNNING)
        self.domains.append(domain)
        return domain


def spawn(func):
    thread = threading.Thread(target=func, daemon=True)
    thread.start()
    return thread


class FakeHypervisorTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.addCleanup(fake.reset)
        fake.configure(steps=4, step_seconds=0.001)
        self.source_conn = StubConnection()
        self.source_conn.createXML(DOMAIN_XML, 0)
        self.source_hv = fake.FakeHypervisor(lambda: self.source_conn)
        self.conns = {}

    def destination(self, host):
        conn = self.conns.setdefault(host, StubConnection(host))
        hv = fake.FakeHypervisor(lambda: conn)
        dest = hv.destination_from_xml(
            host, self.source_hv.source_xml('instance-1'))
        events = []
        dest.subscribe(events.append)
        dest.start_incoming()
        address = dest.open_stream(SECRET, listen=('127.0.0.1', 0))
        return dest, address, events

    def stream(self, hosts, warm_up=False):
        dests = {}
        addresses = []
        for host in hosts:
            dest, address, _ = self.destination(host)
            dests[host] = dest
            addresses.append((host, address))
        drops = []
        relay = self.source_hv.create_relay(
            SECRET, addresses, on_drop=lambda *args: drops.append(args))
        source = self.source_hv.source('instance-1')
        stream = source_stream.SourceStream(
            source, relay, source_stream.StreamSettings(
                warm_up=warm_up, sample_interval=0.001))
        stream.start(spawn)
        self.addCleanup(stream.close)
        return stream, source, dests, drops

    def test_destinations_start_paused_on_their_host(self):
        dest, _, _ = self.destination('host2')
        [domain] = self.conns['host2'].domains
        self.assertEqual(PAUSED, domain.state)
        self.assertEqual(vocabulary.QemuStatus.SETUP, dest.migration_status())
        self.assertFalse(dest.is_running())

    def test_all_destinations_complete_and_source_pauses(self):
        stream, source, dests, drops = self.stream(['host2', 'host3'])
        self.assertTrue(stream.wait(5))
        self.assertEqual(vocabulary.QemuStatus.COMPLETED,
                         source.stats().status)
        self.assertFalse(source.is_running())
        for dest in dests.values():
            self.assertEqual(vocabulary.QemuStatus.COMPLETED,
                             dest.migration_status())
        # Every byte of the first pass and of the dirty pages sent after
        # it, alike at every destination.
        received = {dest.stream_bytes_received() for dest in dests.values()}
        self.assertEqual(1, len(received))
        self.assertGreater(received.pop(), source.total)
        self.assertEqual([], drops)

    def test_stream_fault_drops_only_that_destination(self):
        fake.inject_fault('host3', vocabulary.DestinationPhase.STREAM)
        stream, source, dests, drops = self.stream(['host2', 'host3'])
        self.assertTrue(stream.wait(5))
        self.assertEqual(vocabulary.QemuStatus.COMPLETED,
                         source.stats().status)
        self.assertEqual(vocabulary.QemuStatus.COMPLETED,
                         dests['host2'].migration_status())
        self.assertEqual(vocabulary.QemuStatus.FAILED,
                         dests['host3'].migration_status())
        self.assertEqual(['host3'], [name for name, _ in drops])
        self.assertEqual('failed',
                         stream.status()['destinations']['host3']['state'])

    def test_every_destination_failing_leaves_the_source_running(self):
        fake.inject_fault('host2', vocabulary.DestinationPhase.COMPLETE)
        stream, source, dests, _ = self.stream(['host2'])
        self.assertTrue(stream.wait(5))
        self.assertEqual(vocabulary.QemuStatus.FAILED, source.stats().status)
        self.assertTrue(source.is_running())
        self.assertEqual(vocabulary.QemuStatus.FAILED,
                         dests['host2'].migration_status())

    def test_prepare_fault_raises_after_the_domain_exists(self):
        fake.inject_fault('host2', vocabulary.DestinationPhase.PREPARE,
                          'no room')
        conn = StubConnection()
        hv = fake.FakeHypervisor(lambda: conn)
        dest = hv.destination_from_xml('host2', DOMAIN_XML)
        error = self.assertRaises(exceptions.HypervisorError,
                                  dest.start_incoming)
        self.assertIn('no room', str(error))
        dest.destroy()
        self.assertEqual([], conn.domains)

    def test_resume_fault_keeps_the_copy_paused(self):
        fake.inject_fault('host2', vocabulary.DestinationPhase.RESUME)
        stream, _, dests, _ = self.stream(['host2', 'host3'])
        self.assertTrue(stream.wait(5))
        self.assertRaises(exceptions.HypervisorError, dests['host2'].resume)
        self.assertFalse(dests['host2'].is_running())
        dests['host3'].resume()
        self.assertTrue(dests['host3'].is_running())

    def test_resume_before_completion_is_refused(self):
        dest, _, _ = self.destination('host2')
        self.assertRaises(exceptions.HypervisorError, dest.resume)

    def test_loser_destroy_removes_its_domain(self):
        stream, _, dests, _ = self.stream(['host2', 'host3'])
        self.assertTrue(stream.wait(5))
        dests['host3'].destroy()
        self.assertEqual([], self.conns['host3'].domains)
        self.assertEqual(1, len(self.conns['host2'].domains))

    def test_warm_up_holds_until_switch_over(self):
        stream, source, dests, _ = self.stream(['host2'], warm_up=True)
        self.assertFalse(stream.wait(0.05))
        self.assertEqual(vocabulary.QemuStatus.ACTIVE, source.stats().status)
        self.assertTrue(stream.holding)
        stream.switch_over()
        self.assertTrue(stream.wait(5))
        self.assertEqual(vocabulary.QemuStatus.COMPLETED,
                         source.stats().status)
        self.assertEqual(500, source.downtime_limit_ms)

    def test_abort_cancels_and_fails_destinations(self):
        stream, source, dests, _ = self.stream(['host2'], warm_up=True)
        stream.abort()
        self.assertTrue(stream.wait(5))
        self.assertEqual(vocabulary.QemuStatus.CANCELLED,
                         source.stats().status)
        self.assertTrue(source.is_running())
        self.assertEqual(vocabulary.QemuStatus.FAILED,
                         dests['host2'].migration_status())

    def test_relay_refuses_agents_with_another_secret(self):
        _, address, _ = self.destination('host2')
        relay = self.source_hv.create_relay(b'x' * 32, [('host2', address)])
        self.assertRaises(exceptions.AllDestinationsFailed, relay.start)

    def test_destroy_incoming_spares_running_domains(self):
        self.assertFalse(self.source_hv.destroy_incoming('instance-1'))
        self.destination('host2')
        hv = fake.FakeHypervisor(lambda: self.conns['host2'])
        self.assertTrue(hv.destroy_incoming('instance-1'))
        self.assertEqual([], self.conns['host2'].domains)

    def test_source_start_fault_refuses_the_migration(self):
        fake.inject_fault('host1', fake.PHASE_SOURCE_START, 'no socket')
        _, address, _ = self.destination('host2')
        relay = self.source_hv.create_relay(SECRET, [('host2', address)])
        source = self.source_hv.source('instance-1')
        stream = source_stream.SourceStream(source, relay)
        error = self.assertRaises(exceptions.HypervisorError, stream.start,
                                  spawn)
        self.assertIn('no socket', str(error))
        self.assertTrue(source.is_running())

    def test_source_stream_fault_fails_every_destination(self):
        fake.inject_fault('host1', fake.PHASE_SOURCE_STREAM)
        stream, source, dests, _ = self.stream(['host2', 'host3'])
        self.assertTrue(stream.wait(5))
        self.assertEqual(vocabulary.QemuStatus.FAILED, source.stats().status)
        self.assertTrue(source.is_running())
        for dest in dests.values():
            self.assertEqual(vocabulary.QemuStatus.FAILED,
                             dest.migration_status())

    def test_unknown_phase_is_rejected(self):
        self.assertRaises(ValueError, fake.inject_fault, 'host2', 'boot')
