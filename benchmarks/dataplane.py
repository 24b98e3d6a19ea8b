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

"""Benchmark: multi-destination migration against plain QEMU migration.

``python -m benchmarks.dataplane`` (``tools/run bench dataplane``) times,
on the same guest and interleaved so that machine load hits every case
alike, the total migration time and the downtime of:

* direct: one QEMU migrating straight into one destination QEMU, under
  the same source-side engine (``source_stream.py``) and so the same
  downtime policy as the relayed cases;
* the relay with N = 1, 2, 3 destinations, star and chain;

first on loopback, then over network namespaces whose host links are
shaped to one rate (a bridge in a "switch" namespace, tbf on both
directions of each host's link), where star carries N copies on the
source link and chain one. It prints medians and their ratio to direct.

Total time: migrate command to the winner's RESUME event. Downtime: the
source's STOP event to that RESUME event (QEMU's own event timestamps).
Cores busy: the machine's busy CPU time over the total time, divided by
it (``results.BusyCores``); at the machine's core count a case is bound
by CPU, not by what its links could carry.
"""

import argparse
import contextlib
import ctypes
import logging
import os
import statistics
import subprocess
import sys
import threading
import time

from benchmarks import results
from nova_multidest.dataplane import demo_session
from nova_multidest.dataplane import guest
from nova_multidest.dataplane import qemu
from nova_multidest.dataplane import source_stream
from nova_multidest import vocabulary

MiB = 1 << 20
CLONE_NEWNET = 0x40000000
SUBNET = '198.18.0.'     # RFC 2544 benchmarking range, inside namespaces
CASES = [('direct', 'direct', 1)] + [
    ('%s N=%d' % (topology, n), topology, n)
    for topology in ('star', 'chain') for n in (1, 2, 3)]
QUICK_CASES = ['direct', 'star N=1', 'star N=3', 'chain N=3']


# -- network namespaces --------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def in_netns(name):
    """Run the calling thread (and threads it starts) inside ``name``.

    setns() with CLONE_NEWNET changes only the calling thread, and
    sockets keep the namespace they were created in, so the relay and the
    agents of one process can sit on different simulated hosts.
    """
    with open('/proc/thread-self/ns/net') as own, \
            open('/run/netns/%s' % name) as target:
        if _libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), 'setns %s failed' % name)
        try:
            yield
        finally:
            _libc.setns(own.fileno(), CLONE_NEWNET)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ShapedNetwork(object):
    """Hosts on a switch; every host link shaped to ``rate_mbit``."""

    PREFIX = 'mdb'

    def __init__(self, hosts, rate_mbit):
        self.prefix = '%s%d' % (self.PREFIX, os.getpid())
        self.switch = '%s-sw' % self.prefix
        self.hosts = list(hosts)
        self.rate_mbit = rate_mbit
        self.namespaces = []
        self.addresses = {}

    def ns(self, host):
        return '%s-%s' % (self.prefix, host)

    @staticmethod
    def _ip(*args):
        subprocess.run(('ip',) + args, check=True)

    def _shape(self, namespace, device):
        # burst must exceed rate / HZ or tbf cannot reach the rate.
        subprocess.run(
            ['ip', 'netns', 'exec', namespace, 'tc', 'qdisc', 'add', 'dev',
             device, 'root', 'tbf', 'rate', '%dmbit' % self.rate_mbit,
             'burst', '1mb', 'latency', '50ms'], check=True)

    @classmethod
    def remove_stale(cls):
        """Namespaces of networks whose process is gone, removed.

        A benchmark or test killed by a signal never runs remove(); its
        namespaces are named after its pid, so a later run can tell them
        from a live run's. Returns the names removed.
        """
        listing = subprocess.run(['ip', 'netns', 'list'], check=True,
                                 capture_output=True, text=True).stdout
        stale = []
        for line in listing.splitlines():
            name = line.split(' ', 1)[0]
            owner = name[len(cls.PREFIX):].partition('-')[0]
            if (not name.startswith(cls.PREFIX) or '-' not in name or
                    not owner.isdigit() or _pid_alive(int(owner))):
                continue
            subprocess.run(['ip', 'netns', 'del', name])
            stale.append(name)
        return stale

    def create(self):
        removed = self.remove_stale()
        if removed:
            print('Removed the namespaces of an earlier run that was '
                  'killed: %s' % ' '.join(removed), file=sys.stderr)
        self._ip('netns', 'add', self.switch)
        self.namespaces.append(self.switch)
        self._ip('-n', self.switch, 'link', 'add', 'br0', 'type', 'bridge')
        self._ip('-n', self.switch, 'link', 'set', 'br0', 'up')
        for index, host in enumerate(self.hosts):
            namespace = self.ns(host)
            self._ip('netns', 'add', namespace)
            self.namespaces.append(namespace)
            port = 'p%d' % index
            self._ip('link', 'add', 'eth0', 'netns', namespace, 'type',
                     'veth', 'peer', 'name', port, 'netns', self.switch)
            address = '%s%d' % (SUBNET, 10 + index)
            self.addresses[host] = address
            self._ip('-n', namespace, 'addr', 'add', address + '/24',
                     'dev', 'eth0')
            self._ip('-n', namespace, 'link', 'set', 'lo', 'up')
            self._ip('-n', namespace, 'link', 'set', 'eth0', 'up')
            self._ip('-n', self.switch, 'link', 'set', port, 'master',
                     'br0', 'up')
            self._shape(namespace, 'eth0')
            self._shape(self.switch, port)

    def remove(self):
        for namespace in reversed(self.namespaces):
            subprocess.run(['ip', 'netns', 'del', namespace])
        self.namespaces = []


# -- hypervisors that place guests on hosts -------------------------------

class HostedDestination(qemu.QemuDestination):
    """A destination QEMU on a simulated host (None: this host)."""

    network = None
    host = None
    direct = False
    multifd_channels = 0

    def start_incoming(self, capabilities=None, multifd_channels=0):
        super().start_incoming(capabilities,
                               multifd_channels or self.multifd_channels)

    @property
    def listen_uri(self):
        if not self.direct:
            return super().listen_uri
        host = ('127.0.0.1' if self.network is None
                else self.network.addresses[self.host])
        return 'tcp:%s:0' % host

    def direct_uri(self):
        """Where the listening QEMU got its port (it picked a free one)."""
        info = self.process.qmp.execute('query-migrate')
        address = info['socket-address'][0]
        return 'tcp:%s:%s' % (address['host'], address['port'])

    def open_stream(self, secret, listen=('127.0.0.1', 0)):
        if self.network is None:
            return super().open_stream(secret, listen)
        with in_netns(self.network.ns(self.host)):
            return super().open_stream(
                secret, (self.network.addresses[self.host], 0))


class BenchHypervisor(qemu.QemuHypervisor):

    def __init__(self, network=None, multifd_channels=0):
        super().__init__()
        self.network = network
        self.direct = False
        self.multifd_channels = multifd_channels

    def capabilities(self):
        return {'multifd': True} if self.multifd_channels else {}

    def prepare_source(self, source):
        if self.multifd_channels:
            source.process.qmp.execute('migrate-set-parameters', **{
                'multifd-channels': self.multifd_channels})

    def command_prefix(self, name):
        if self.network is None:
            return ()
        return ('ip', 'netns', 'exec', self.network.ns(name))

    def create_destination(self, name, source):
        dest = super().create_destination(name, source)
        hosted = HostedDestination(dest.process)
        hosted.network, hosted.host = self.network, name
        hosted.direct = self.direct
        hosted.multifd_channels = self.multifd_channels
        return hosted


# -- one measurement -------------------------------------------------------

class Measurement(object):
    """One migration; ``resumed_at`` is the winner's RESUME (wall clock)."""

    def __init__(self, total_s, downtime_ms, per_destination_mbs=None,
                 resumed_at=None):
        self.total_s = total_s
        self.downtime_ms = downtime_ms
        self.per_destination_mbs = per_destination_mbs
        self.resumed_at = resumed_at
        self.cores = None


class DirectTarget(object):
    """The source stream's relay, stood in by the destination QEMU itself.

    Direct migrations go through the same source-side engine as relayed
    ones, so both switch over under the same downtime policy and only the
    relay differs.
    """

    bytes_from_source = 0

    def __init__(self, uri):
        self.source_uri = uri

    def start(self):
        pass

    def close(self):
        pass

    def progress(self):
        return {}

    def prioritize_leader(self):
        pass


def migrate_direct(hypervisor, source):
    hypervisor.direct = True
    try:
        dest = hypervisor.create_destination('d0', source)
    finally:
        hypervisor.direct = False
    try:
        dest.start_incoming(hypervisor.capabilities())
        stream = source_stream.SourceStream(
            source, DirectTarget(dest.direct_uri()),
            source_stream.StreamSettings(
                capabilities=hypervisor.capabilities(),
                downtime_limit_ms=SETTINGS['downtime_limit_ms'],
                sample_interval=SETTINGS['sample_interval']))
        started = time.time()
        stream.start(lambda run: threading.Thread(target=run,
                                                  daemon=True).start())
        done = dest.process.qmp.wait_event(
            'MIGRATION', lambda e: e.data.get('status') in
            vocabulary.QemuStatus.FINAL, timeout=120)
        completed = vocabulary.QemuStatus.COMPLETED
        if done is None or done.data['status'] != completed:
            raise RuntimeError('direct migration failed: %s' % (done,))
        dest.resume()
        resumed = dest.process.qmp.wait_event('RESUME', timeout=10)
        stopped = source.process.qmp.wait_event('STOP', timeout=10)
        stream.wait(10)
        stream.close()
        transferred = source.stats().transferred
        return Measurement(
            resumed.timestamp - started,
            (resumed.timestamp - stopped.timestamp) * 1000,
            transferred / (done.timestamp - started) / MiB,
            resumed.timestamp)
    finally:
        dest.destroy()


def migrate_relay(hypervisor, source, topology, count, network):
    names = ['d%d' % i for i in range(count)]
    settings = demo_session.Settings(topology=topology,
                                     capabilities=hypervisor.capabilities(),
                                     **SETTINGS)
    migration = demo_session.Session(hypervisor, source, names, settings)
    context = (in_netns(network.ns('source')) if network is not None
               else contextlib.nullcontext())
    with context:
        migration.start()
    result = migration.wait(180)
    if result.winner is None:
        raise RuntimeError('relay migration failed: %s' % result.error)
    rates = [result.bytes_by_destination[n] / result.completion_s[n] / MiB
             for n in result.completion_s if result.completion_s[n] > 0]
    return Measurement(result.total_time_s, result.downtime_ms,
                       statistics.mean(rates) if rates else None,
                       result.resumed_at)


SETTINGS = dict(downtime_limit_ms=300, lag_limit=1 << 30,
                election_timeout=60, completion_timeout=120,
                sample_interval=0.05)


def measure(hypervisor, image, memory_mb, case, network):
    label, topology, count = case
    process = hypervisor.boot('source', memory_mb=memory_mb, image=image)
    try:
        source = hypervisor.source(process)
        hypervisor.prepare_source(source)
        with results.BusyCores() as meter:
            if topology == 'direct':
                measurement = migrate_direct(hypervisor, source)
            else:
                measurement = migrate_relay(hypervisor, source, topology,
                                            count, network)
        measurement.cores = meter.cores(
            measurement.resumed_at - measurement.total_s,
            measurement.resumed_at)
        return measurement
    finally:
        hypervisor.destroy_all()
        hypervisor.processes = []


def run_series(title, hypervisor, image, memory_mb, cases, repetitions,
               network, out, report=None):
    samples = {case[0]: [] for case in cases}
    for rep in range(repetitions):
        # Rotate the order so no case always runs first or last.
        order = cases[rep % len(cases):] + cases[:rep % len(cases)]
        for case in order:
            samples[case[0]].append(
                measure(hypervisor, image, memory_mb, case, network))
            out.write('.')
            out.flush()
    out.write('\n')
    print_table(title, samples, repetitions, out, report)
    return samples


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float('nan')


def print_table(title, samples, repetitions, out, report=None):
    """Print medians and ratios to direct; add them to ``report``."""
    base = samples['direct']
    base_total = _median(m.total_s for m in base)
    base_down = _median(m.downtime_ms for m in base)
    out.write('\n%s (medians of %d)\n' % (title, repetitions))
    out.write('%-12s %8s %8s %11s %8s %14s %6s\n' % (
        'case', 'total s', 'x direct', 'downtime ms', 'x direct',
        'MiB/s per dest', 'cores'))
    rows = []
    for label, runs in samples.items():
        total = _median(m.total_s for m in runs)
        down = _median(m.downtime_ms for m in runs)
        rate = _median(m.per_destination_mbs for m in runs)
        cores = _median(m.cores for m in runs)
        rows.append((label, total, total / base_total, down,
                     down / base_down, rate, cores))
        out.write('%-12s %8.3f %8.2f %11.1f %8.2f %14.0f %6.2f\n'
                  % rows[-1])
    out.flush()
    if report is not None:
        report.table(
            '%s (medians of %d)' % (title, repetitions),
            ('case', 'total s', 'x direct', 'downtime ms', 'x direct',
             'MiB/s per destination', 'cores busy (of %d)' % os.cpu_count()),
            [(label, '%.3f' % total, '%.2fx' % total_x, '%.1f' % down,
              '%.2fx' % down_x, '%.0f' % rate, '%.2f' % cores)
             for label, total, total_x, down, down_x, rate, cores in rows])
        labels = [row[0] for row in rows]
        report.chart('%s: total time, x direct' % title, labels,
                     [row[2] for row in rows], 'x direct', 1.0, 'direct')
        report.chart('%s: downtime, x direct' % title, labels,
                     [row[4] for row in rows], 'x direct', 1.0, 'direct')


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='benchmarks.dataplane',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('--repetitions', type=int, default=5)
    parser.add_argument('--quick', action='store_true',
                        help='2 repetitions of direct, star N=1, star N=3 '
                             'and chain N=3')
    parser.add_argument('--memory', type=int, default=128, metavar='MiB')
    parser.add_argument('--rate', type=int, default=1000, metavar='Mbit/s',
                        help='shaped link rate (default 1000)')
    parser.add_argument('--no-shaped', action='store_true',
                        help='skip the network-namespace series')
    parser.add_argument('--no-loopback', action='store_true',
                        help='skip the loopback series')
    parser.add_argument('--multifd', type=int, default=0, metavar='CHANNELS',
                        help='migrate every case, direct too, with this '
                             'many multifd channels (results in '
                             'dataplane_multifd)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # Losers are dropped on purpose; the relay's warnings would clutter
    # the table.
    logging.basicConfig(level=logging.ERROR)
    cases = CASES
    repetitions = args.repetitions
    if args.quick:
        cases = [c for c in CASES if c[0] in QUICK_CASES]
        repetitions = 2
    fill = (args.memory - 24) * MiB
    # A guest that halts between timer ticks: on two shared cores a
    # spinning vCPU would steal the CPU the relay and the destinations
    # need, and measure the machine instead of the data path.
    image = guest.DirtyingGuest(dirty_size=8 * MiB, fill_size=fill,
                                pages_per_tick=16)
    out = sys.stdout
    if args.multifd:
        report = results.Report(
            'dataplane_multifd', 'Real guest migration with %d multifd '
            'channels: relay against direct' % args.multifd, argv,
            benchmark='dataplane')
    else:
        report = results.Report('dataplane', 'Real guest migration: relay '
                                'against direct QEMU-to-QEMU', argv)
    description = ('Guest: %d MiB RAM, %d MiB written once, then 16 pages '
                   'of an 8 MiB range dirtied per 1 kHz tick; downtime '
                   'limit %d ms; QEMU TCG.'
                   % (args.memory, fill // MiB,
                      SETTINGS['downtime_limit_ms']))
    out.write(description + '\n')
    report.note(description)
    if not args.no_loopback:
        hypervisor = BenchHypervisor(multifd_channels=args.multifd)
        try:
            run_series('Loopback', hypervisor, image, args.memory, cases,
                       repetitions, None, out, report)
        finally:
            hypervisor.destroy_all()
    if not args.no_shaped and os.geteuid() != 0:
        out.write('The shaped series needs root (network namespaces and '
                  'tc); not run.\n')
    elif not args.no_shaped:
        network = ShapedNetwork(['source', 'd0', 'd1', 'd2'], args.rate)
        hypervisor = BenchHypervisor(network, args.multifd)
        try:
            network.create()
            run_series('Shaped links, %d Mbit/s per host link' % args.rate,
                       hypervisor, image, args.memory, cases, repetitions,
                       network, out, report)
        finally:
            hypervisor.destroy_all()
            network.remove()
    for path in report.write():
        out.write('wrote %s\n' % path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
