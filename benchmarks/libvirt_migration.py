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

"""Benchmark: the libvirt path against libvirt's own live migration.

Nova's driver migrates with ``virDomainMigrateToURI3`` (live, peer to
peer). This benchmark runs two private libvirtd daemons, each in its own
mount and UTS namespace with its own host UUID (two hosts, as libvirt
sees it, on loopback), boots the same guest on the first and migrates it,
interleaved so that machine load hits every case alike:

* ``libvirt``: ``migrateToURI3`` to the second daemon, live and peer to
  peer, as Nova calls it;
* ``multidest star/chain N=...``: the libvirt hypervisor extension (the
  code Nova's computes run): destinations started paused in incoming mode
  on the second daemon, the relay, ``SourceStream``, and the first
  destination to complete resumed, as the conductor elects it.

Total time: from the migrate call (for the extension: from creating its
destinations, as libvirt starts its destination QEMU inside the call) to
the winner's RESUME event. Downtime: the source's STOP event to that
RESUME event. Both events come from QEMU through libvirt's monitor-event
API, with QEMU's own timestamps, the same way for every case. Cores busy:
the machine's busy CPU time over the same interval, divided by it
(``results.BusyCores``); at the machine's core count a case is bound by
CPU, not by what loopback could carry.

``--bandwidth`` caps every case at the same migration bandwidth (QEMU's
``max-bandwidth``, which Nova sets from ``live_migration_bandwidth``), as
a cloud's migration network does: without it, loopback carries whatever
the cores can produce.

    tools/run bench libvirt_migration [--repetitions 3] [--memory 128]
        [--bandwidth MiB/s]
"""

import argparse
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid

import libvirt
import libvirt_qemu

from benchmarks import results
from nova_multidest.dataplane import guest as guest_image
from nova_multidest.dataplane import protocol
from nova_multidest.dataplane import source_stream
from nova_multidest.virt.hypervisors import libvirt as libvirt_ext
from nova_multidest import vocabulary
from tests.dataplane import libvirt_fixture as daemons

MiB = 1 << 20
DOWNTIME_LIMIT_MS = 300
TIMEOUT = 180
CASES = [('libvirt', 'libvirt', 1),
         ('multidest star N=1', vocabulary.Topology.STAR, 1),
         ('multidest chain N=3', vocabulary.Topology.CHAIN, 3),
         ('multidest star N=3', vocabulary.Topology.STAR, 3)]


class EventLoop(object):
    """libvirt's default event loop, run in a thread, as a Nova host does.

    It must be registered before any connection opens; the monitor events
    then carry QEMU's own timestamps.
    """

    def __init__(self):
        daemons.run_event_loop()
        self._cond = threading.Condition()
        self._events = []

    def watch(self, connection):
        """Record STOP and RESUME of every domain of ``connection``."""
        for name in ('STOP', 'RESUME'):
            libvirt_qemu.qemuMonitorEventRegister(
                connection, None, name, self._on_event, connection.getURI(),
                0)

    def _on_event(self, conn, dom, event, seconds, micros, details, uri):
        with self._cond:
            self._events.append((uri, dom.name(), event,
                                 seconds + micros / 1e6))
            self._cond.notify_all()

    def forget(self):
        with self._cond:
            self._events = []

    def wait(self, uri, event, names, timeout=TIMEOUT):
        """The first ``event`` of one of ``names`` on ``uri``: (name, ts)."""
        def find():
            for e_uri, name, kind, stamp in self._events:
                if e_uri == uri and kind == event and name in names:
                    return name, stamp
            return None
        with self._cond:
            if not self._cond.wait_for(find, timeout):
                raise RuntimeError('no %s event of %s within %ss'
                                   % (event, ', '.join(names), timeout))
            return find()


class Bench(object):

    def __init__(self, memory_mb, work_dir, bandwidth_mb=0):
        self.bandwidth_mb = bandwidth_mb
        self.memory_mb = memory_mb
        self.work_dir = work_dir
        self.events = EventLoop()
        self.source_host = daemons.LibvirtDaemon(hostname='mdbench-src')
        self.dest_host = daemons.LibvirtDaemon(hostname='mdbench-dst')
        self.source_host.setUp()
        self.dest_host.setUp()
        for daemon in (self.source_host, self.dest_host):
            self.events.watch(daemon.connection)
        image = guest_image.DirtyingGuest(
            dirty_size=8 * MiB, fill_size=(memory_mb - 24) * MiB,
            pages_per_tick=16)
        self.kernel = image.write(work_dir)
        self.source_hv = libvirt_ext.LibvirtHypervisor(
            lambda: self.source_host.connection, work_dir=work_dir)
        self.dest_hv = libvirt_ext.LibvirtHypervisor(
            lambda: self.dest_host.connection, rename_destinations=True,
            work_dir=work_dir)

    def close(self):
        for daemon in (self.dest_host, self.source_host):
            daemon.cleanUp()

    def _clean(self):
        for daemon in (self.source_host, self.dest_host):
            for domain in daemon.connection.listAllDomains(0):
                libvirt_ext._destroy_domain(domain)
                with contextlib.suppress(libvirt.libvirtError):
                    domain.undefine()

    def _boot(self):
        name = 'mdbench-%s' % uuid.uuid4().hex[:8]
        self.source_host.connection.createXML(
            daemons.source_xml(name, self.kernel, self.memory_mb), 0)
        # Let the guest write its memory once, as the dataplane benchmark.
        time.sleep(1.0)
        self.events.forget()
        return name

    def measure(self, topology, count):
        """(total s, downtime ms, cores busy) of one migration."""
        name = self._boot()
        try:
            with results.BusyCores() as meter:
                if topology == 'libvirt':
                    started, resumed, stopped = self._libvirt(name)
                else:
                    started, resumed, stopped = self._multidest(
                        name, topology, count)
            return (resumed - started, (resumed - stopped) * 1000,
                    meter.cores(started, resumed))
        finally:
            self._clean()

    def _result(self, started, source_name, winners):
        """(started, resumed, stopped), the last two QEMU's timestamps."""
        _, resumed = self.events.wait(
            self.dest_host.connection.getURI(), 'RESUME', winners)
        _, stopped = self.events.wait(
            self.source_host.connection.getURI(), 'STOP', [source_name])
        return started, resumed, stopped

    def _libvirt(self, name):
        domain = self.source_host.connection.lookupByName(name)
        domain.migrateSetMaxDowntime(DOWNTIME_LIMIT_MS, 0)
        params = {libvirt.VIR_MIGRATE_PARAM_URI: 'tcp://127.0.0.1',
                  libvirt.VIR_MIGRATE_PARAM_BANDWIDTH:
                      self.bandwidth_mb or 1 << 20}
        started = time.time()
        domain.migrateToURI3(self.dest_host.uri, params,
                             libvirt.VIR_MIGRATE_LIVE |
                             libvirt.VIR_MIGRATE_PEER2PEER)
        return self._result(started, name, [name])

    def _multidest(self, name, topology, count):
        # libvirt's own migration starts its destination QEMU inside the
        # measured call: so does this one.
        started = time.time()
        secret = protocol.new_secret()
        source = self.source_hv.source(name)
        xml = self.source_hv.source_xml(name)
        destinations = {}
        addresses = []
        for index in range(count):
            host = 'dest%d' % index
            dest = self.dest_hv.destination_from_xml(host, xml)
            dest.start_incoming()
            destinations[dest.name] = dest
            addresses.append((host, dest.open_stream(
                secret, listen=('127.0.0.1', 0))))
        completed = threading.Condition()
        winner = []

        def on_event(event):
            with completed:
                completed.notify_all()

        for dest in destinations.values():
            dest.subscribe(on_event)
        relay = self.source_hv.create_relay(secret, addresses,
                                            topology=topology)
        stream = source_stream.SourceStream(
            source, relay, source_stream.StreamSettings(
                downtime_limit_ms=DOWNTIME_LIMIT_MS, sample_interval=0.1,
                max_bandwidth=self.bandwidth_mb * MiB))
        stream.start(lambda func: threading.Thread(
            target=func, daemon=True).start())
        try:
            with completed:
                completed.wait_for(lambda: winner or any(
                    d.migration_status() == vocabulary.QemuStatus.COMPLETED
                    and not winner.append(d)
                    for d in destinations.values()), TIMEOUT)
            if not winner:
                raise RuntimeError('no destination completed: %s'
                                   % stream.status())
            winner[0].resume()
            return self._result(started, name, [winner[0].name])
        finally:
            stream.close()
            for dest in destinations.values():
                dest.stop_watching()


def main(argv=None):
    parser = argparse.ArgumentParser(prog='benchmarks.libvirt_migration',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('--repetitions', type=int, default=3)
    parser.add_argument('--memory', type=int, default=128, metavar='MiB')
    parser.add_argument('--bandwidth', type=int, default=0, metavar='MiB/s',
                        help='migration bandwidth of every case (default: '
                             'unlimited)')
    args = parser.parse_args(argv)
    # Losers are cut off on purpose; their agents' warnings would clutter
    # the table.
    logging.basicConfig(level=logging.ERROR)
    libvirt.registerErrorHandler(lambda context, error: None, None)
    # A capped run has a results file of its own beside the unlimited one.
    report = results.Report(
        'libvirt_migration' + ('_%dmib' % args.bandwidth
                               if args.bandwidth else ''),
        "The libvirt path against libvirt's own live migration" +
        (', %d MiB/s' % args.bandwidth if args.bandwidth else ''), argv)
    samples = {label: [] for label, _, _ in CASES}
    with tempfile.TemporaryDirectory(prefix='mdbench-libvirt-') as work:
        bench = Bench(args.memory, work, args.bandwidth)
        try:
            for rep in range(args.repetitions):
                order = CASES[rep % len(CASES):] + CASES[:rep % len(CASES)]
                for label, topology, count in order:
                    samples[label].append(bench.measure(topology, count))
                    sys.stdout.write('.')
                    sys.stdout.flush()
        finally:
            bench.close()
    base_total = statistics.median(t for t, _, _ in samples['libvirt'])
    base_down = statistics.median(d for _, d, _ in samples['libvirt'])
    rows = []
    print('\n%-22s %8s %9s %11s %9s %6s' % (
        'case', 'total s', 'x libvirt', 'downtime ms', 'x libvirt',
        'cores'))
    for label, runs in samples.items():
        total = statistics.median(t for t, _, _ in runs)
        down = statistics.median(d for _, d, _ in runs)
        cores = statistics.median(c for _, _, c in runs)
        rows.append((label, total, total / base_total, down,
                     down / base_down, cores))
        print('%-22s %8.3f %8.2fx %11.1f %8.2fx %6.2f' % rows[-1])
    report.table(
        '%d MiB guest (TCG), downtime limit %d ms, bandwidth %s, '
        'medians of %d'
        % (args.memory, DOWNTIME_LIMIT_MS,
           '%d MiB/s' % args.bandwidth if args.bandwidth else 'unlimited',
           args.repetitions),
        ('case', 'total s', 'x libvirt', 'downtime ms', 'x libvirt',
         'cores busy (of %d)' % os.cpu_count()),
        [(label, '%.3f' % t, '%.2fx' % tx, '%.1f' % d, '%.2fx' % dx,
          '%.2f' % c)
         for label, t, tx, d, dx, c in rows],
        notes=['Targets (issue 11): N=1 within 1.10x total and 1.2x '
               'downtime; chain N=3 within 1.25x total. The extension '
               "hears QEMU's events through libvirt's monitor events; "
               'nothing polls.'])
    labels = [row[0] for row in rows]
    report.chart('Total time, x libvirt', labels, [row[2] for row in rows],
                 'x libvirt', 1.0, 'libvirt')
    report.chart('Downtime, x libvirt', labels, [row[4] for row in rows],
                 'x libvirt', 1.0, 'libvirt')
    for path in report.write():
        print('wrote %s' % path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
