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

"""The libvirt hypervisor extension against a real libvirtd and QEMU (TCG).

The test starts its own libvirtd in a private mount namespace, so that
its configuration (QEMU runs as root, no cgroups, no virtlogd), state
directories and sockets are its own and nothing of the host's libvirt is
touched. One daemon hosts the source and every destination, under
different names.
"""

import os
import threading
import time
import uuid

import fixtures
import libvirt
import testtools

from nova_multidest.dataplane import guest as guest_image
from nova_multidest.dataplane import hypervisor
from nova_multidest.dataplane import protocol
from nova_multidest.dataplane import source_stream
from nova_multidest import exceptions
from nova_multidest.virt.hypervisors import libvirt as libvirt_ext
from nova_multidest import vocabulary
from tests.dataplane import libvirt_fixture

MiB = 1 << 20
STREAM_TIMEOUT = 60


class StatusWaiter(object):
    """Wakes the test on the guest's migration events, and only on them.

    No timed re-check: a missing event fails the test.
    """

    def __init__(self, guest):
        self.guest = guest
        self.changed = threading.Condition()
        self.events = []
        guest.subscribe(self._on_event)

    def _on_event(self, event):
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def kinds(self):
        with self.changed:
            return [(e.kind, e.status) for e in self.events]

    def wait_event(self, kind, timeout, status=None):
        """The events of ``kind`` (and ``status``), once one has come."""
        def matching():
            return [e for e in self.events if e.kind == kind and
                    status in (None, e.status)]

        with self.changed:
            self.changed.wait_for(matching, timeout)
            return matching()

    def wait_active(self, timeout):
        """Until the stream has started arriving."""
        deadline = time.monotonic() + timeout
        with self.changed:
            active = vocabulary.QemuStatus.ACTIVE
            while self.guest.migration_status() != active:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError('no stream reached %s'
                                         % self.guest.name)
                self.changed.wait(left)

    def wait_final(self, timeout):
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                status = self.guest.migration_status()
                left = deadline - time.monotonic()
                if status in vocabulary.QemuStatus.FINAL or left <= 0:
                    return status
                self.changed.wait(left)


class LibvirtExtensionTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        # libvirt prints every error it raises; the tests expect some.
        libvirt.registerErrorHandler(lambda context, error: None, None)
        self.daemon = self.useFixture(libvirt_fixture.LibvirtDaemon())
        self.conn = self.daemon.connection
        self.work_dir = self.useFixture(fixtures.TempDir()).path
        kernel = guest_image.DirtyingGuest().write(self.work_dir)
        self.name = 'multidest-src-%s' % uuid.uuid4().hex[:8]
        self.conn.createXML(libvirt_fixture.source_xml(self.name, kernel), 0)
        self.hv = libvirt_ext.LibvirtHypervisor(
            lambda: self.conn, rename_destinations=True,
            work_dir=self.work_dir)

    def _domain_names(self):
        return sorted(d.name() for d in self.conn.listAllDomains(0))

    def test_stream_to_three_paused_destinations_one_resumes(self):
        secret = protocol.new_secret()
        source = self.hv.source(self.name)
        self.assertTrue(source.is_running())
        destinations = {}
        addresses = []
        for host in ('dest1', 'dest2', 'dest3'):
            dest = self.hv.create_destination(host, source)
            dest.start_incoming()
            destinations[host] = dest
            addresses.append((host, dest.open_stream(
                secret, listen=('127.0.0.1', 0))))
        self.daemon.note_qemu_pids()
        self.assertEqual(4, len(self.daemon.live_qemu_pids()))
        for dest in destinations.values():
            state, _ = dest.domain.state()
            self.assertEqual(libvirt.VIR_DOMAIN_PAUSED, state)
            self.assertEqual('inmigrate', dest.run_state())
            self.assertFalse(dest.domain.isPersistent())
        waiters = {host: StatusWaiter(dest)
                   for host, dest in destinations.items()}
        source_waiter = StatusWaiter(source)
        started = time.time()

        relay = self.hv.create_relay(secret, addresses)
        stream = source_stream.SourceStream(
            source, relay, source_stream.StreamSettings(
                downtime_limit_ms=2000, max_bandwidth=1024 * MiB,
                sample_interval=0.1))
        stream.start(lambda func: threading.Thread(
            target=func, daemon=True).start())
        self.addCleanup(stream.close)
        self.assertTrue(stream.wait(STREAM_TIMEOUT), stream.status())
        self.assertEqual(vocabulary.QemuStatus.COMPLETED,
                         source.stats().status)
        self.assertFalse(source.is_running())
        for host, waiter in waiters.items():
            self.assertEqual(vocabulary.QemuStatus.COMPLETED,
                             waiter.wait_final(STREAM_TIMEOUT), host)
            self.assertEqual(relay.bytes_from_source,
                             destinations[host].stream_bytes_received())
            # QEMU's own events, through libvirt, with QEMU's timestamps;
            # they may arrive after the status query saw the end.
            self.assertTrue(waiter.wait_event(
                hypervisor.EVENT_MIGRATION, STREAM_TIMEOUT,
                status=vocabulary.QemuStatus.COMPLETED), host)
            for event in waiter.events:
                self.assertGreaterEqual(event.timestamp, started - 1)
                self.assertLessEqual(event.timestamp, time.time() + 1)
        stopped = source_waiter.wait_event(hypervisor.EVENT_STOPPED,
                                           STREAM_TIMEOUT)
        self.assertEqual(1, len(stopped))
        # QEMU's pass events, which end the hold of the first pass, come
        # through libvirt too, each with the pass that began (1 first).
        passes = source_waiter.wait_event(hypervisor.EVENT_PASS,
                                          STREAM_TIMEOUT)
        self.assertTrue(passes)
        self.assertEqual(list(range(1, len(passes) + 1)),
                         [event.iteration for event in passes])
        self.assertTrue(source_waiter.wait_event(
            hypervisor.EVENT_MIGRATION, STREAM_TIMEOUT,
            status=vocabulary.QemuStatus.COMPLETED))

        # One-way stream, so every copy equals the paused source.
        source_ram = source.memory_digest(self.work_dir)
        for host, dest in destinations.items():
            self.assertFalse(dest.is_running(), host)
            self.assertEqual(source_ram, dest.memory_digest(self.work_dir),
                             host)

        winner = destinations.pop('dest2')
        winner.resume()
        self.assertTrue(winner.is_running())
        # A resumed guest is Nova's again: nothing of ours watches it.
        self.assertIsNone(winner._registrations)
        self.assertTrue(winner.domain.isPersistent())
        persistent = winner.domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        self.assertFalse(libvirt_ext.is_incoming_xml(persistent))
        self.assertIsNone(libvirt_ext.incoming_work_dir(persistent))
        for dest in destinations.values():
            dest.destroy()
            self.assertFalse(os.path.exists(dest.work_dir))
        self.assertEqual(sorted([self.name, winner.domain.name()]),
                         self._domain_names())
        self.assertFalse(os.path.exists(winner.work_dir))

        stream.close()
        libvirt_ext._destroy_domain(self.hv.source(self.name).domain)
        libvirt_ext._destroy_domain(winner.domain)
        self.assertEqual([], self._domain_names())
        self.assertEqual([], self.conn.listDefinedDomains())
        self.assertEqual(set(), self.daemon.live_qemu_pids())
        self.assertEqual(['dirtying-guest.bin'], os.listdir(self.work_dir))

    def test_destination_lost_mid_stream_leaves_the_other_intact(self):
        secret = protocol.new_secret()
        source = self.hv.source(self.name)
        destinations = {}
        addresses = []
        for host in ('dest1', 'dest2'):
            dest = self.hv.create_destination(host, source)
            dest.start_incoming()
            destinations[host] = dest
            addresses.append((host, dest.open_stream(
                secret, listen=('127.0.0.1', 0))))
        waiters = {host: StatusWaiter(dest)
                   for host, dest in destinations.items()}
        relay = self.hv.create_relay(secret, addresses)
        stream = source_stream.SourceStream(
            source, relay, source_stream.StreamSettings(
                warm_up=True, downtime_limit_ms=2000,
                max_bandwidth=1024 * MiB, sample_interval=0.1))
        stream.start(lambda func: threading.Thread(
            target=func, daemon=True).start())
        self.addCleanup(stream.close)

        lost = destinations.pop('dest1')
        waiters['dest1'].wait_active(STREAM_TIMEOUT)
        # Killed behind the extension's back: its lifecycle event says so.
        lost.domain.destroy()
        self.assertEqual(1, len(waiters['dest1'].wait_event(
            hypervisor.EVENT_EXITED, STREAM_TIMEOUT)))
        lost.destroy()
        stream.switch_over()
        self.assertTrue(stream.wait(STREAM_TIMEOUT), stream.status())
        self.assertEqual(vocabulary.QemuStatus.COMPLETED,
                         source.stats().status)
        self.assertEqual(vocabulary.QemuStatus.COMPLETED,
                         waiters['dest2'].wait_final(STREAM_TIMEOUT))
        winner = destinations['dest2']
        self.assertEqual(source.memory_digest(self.work_dir),
                         winner.memory_digest(self.work_dir))
        winner.resume()
        self.assertTrue(winner.is_running())
        self.assertEqual(sorted([self.name, winner.domain.name()]),
                         self._domain_names())

    def test_source_resumes_after_a_completed_stream_nobody_took(self):
        secret = protocol.new_secret()
        source = self.hv.source(self.name)
        dest = self.hv.create_destination('dest1', source)
        dest.start_incoming()
        address = dest.open_stream(secret, listen=('127.0.0.1', 0))
        relay = self.hv.create_relay(secret, [('dest1', address)])
        stream = source_stream.SourceStream(
            source, relay, source_stream.StreamSettings(
                downtime_limit_ms=2000, max_bandwidth=1024 * MiB,
                sample_interval=0.1))
        stream.start(lambda func: threading.Thread(
            target=func, daemon=True).start())
        self.addCleanup(stream.close)
        self.assertTrue(stream.wait(STREAM_TIMEOUT), stream.status())
        self.assertEqual('postmigrate', source.run_state())
        dest.destroy()
        stream.close()

        source.resume()
        self.assertTrue(source.is_running())
        self.assertEqual('running', source.run_state())
        self.assertEqual([self.name], self._domain_names())

    def test_destroy_incoming_spares_running_domains(self):
        source = self.hv.source(self.name)
        dest = self.hv.create_destination('dest1', source)
        dest.start_incoming()
        self.assertTrue(os.path.isdir(dest.work_dir))
        self.assertFalse(self.hv.destroy_incoming(self.name))
        self.assertTrue(self.hv.destroy_incoming(dest.domain.name()))
        self.assertEqual([self.name], self._domain_names())
        self.assertTrue(source.is_running())
        self.assertFalse(os.path.exists(dest.work_dir))

    def test_cancel_keeps_the_source_running(self):
        secret = protocol.new_secret()
        source = self.hv.source(self.name)
        dest = self.hv.create_destination('dest1', source)
        dest.start_incoming()
        address = dest.open_stream(secret, listen=('127.0.0.1', 0))
        waiter = StatusWaiter(dest)
        relay = self.hv.create_relay(secret, [('dest1', address)])
        stream = source_stream.SourceStream(
            source, relay, source_stream.StreamSettings(
                warm_up=True, max_bandwidth=64 * MiB, sample_interval=0.1))
        stream.start(lambda func: threading.Thread(
            target=func, daemon=True).start())
        self.addCleanup(stream.close)
        stream.abort()
        self.assertTrue(stream.wait(STREAM_TIMEOUT))
        self.assertEqual(vocabulary.QemuStatus.CANCELLED,
                         source.stats().status)
        self.assertTrue(source.is_running())
        stream.close()
        self.assertEqual(vocabulary.QemuStatus.FAILED,
                         waiter.wait_final(STREAM_TIMEOUT))
        dest.destroy()
        self.assertEqual([self.name], self._domain_names())

    def test_refused_event_callback_says_what_libvirt_refused(self):
        # Two watchers of one domain on one connection: libvirt refuses
        # the second's callbacks. The error names the callback and
        # libvirt's reason, not a guess at the cause.
        first = self.hv.source(self.name)
        first.subscribe(lambda event: None)
        self.addCleanup(first.stop_watching)
        second = self.hv.source(self.name)
        error = self.assertRaises(exceptions.HypervisorError,
                                  second.subscribe, lambda event: None)
        message = str(error)
        self.assertIn('its lifecycle events', message)
        self.assertIn('already tracked', message)
        self.assertNotIn('event loop', message)
        # Nothing of the refused watcher stays registered: once the first
        # one stops, another watcher gets every callback.
        first.stop_watching()
        third = self.hv.source(self.name)
        third.subscribe(lambda event: None)
        third.stop_watching()
