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

"""Benchmark: a guest that dirties memory faster than its link.

``python -m benchmarks.busy_guest`` (``tools/run bench busy_guest``)
measures, on one busy guest and shaped links (the network namespaces of
``benchmarks/dataplane.py``), interleaved so that machine load hits every
case alike:

* relay, chain N=3, auto-converge: what nova-multidest does with
  ``live_migration_permit_auto_converge``;
* relay, chain N=3, force complete at the completion timeout: what it
  does with ``live_migration_timeout_action = force_complete``;
* direct N=1, auto-converge: Nova's own migration with auto-converge;
* direct N=1, post-copy after the first pass: Nova's own migration with
  ``live_migration_permit_post_copy`` forced complete, which is what a
  multi-destination migration would become after an early election.

For each: total time (migrate command to the guest running on its new
host), downtime (the source's STOP event to the destination's RESUME
event) and, for post-copy, how long the guest ran on its destination
while part of its memory was still only on the source (any failure of
that host or link in that window loses the guest).
"""

import argparse
import logging
import statistics
import sys
import time

from benchmarks import dataplane as shaped
from benchmarks import results
from nova_multidest.dataplane import demo_session
from nova_multidest.dataplane import guest
from nova_multidest.dataplane import source_stream
from nova_multidest import vocabulary

MiB = 1 << 20
NAMES = ['d0', 'd1', 'd2']
DOWNTIME_LIMIT_MS = 100
FORCE_AFTER_S = 20
MAX_S = 240
CASES = ('relay N=3 auto-converge', 'relay N=3 force complete',
         'direct auto-converge', 'direct post-copy')


class Measurement(object):

    def __init__(self, total_s, downtime_ms, throttle=0, postcopy_s=None):
        self.total_s = total_s
        self.downtime_ms = downtime_ms
        self.throttle = throttle
        self.postcopy_s = postcopy_s


def relay(hypervisor, network, source, **settings):
    throttle = [0]

    def on_progress(progress):
        throttle.append(source.stats().throttle_percent)

    session = demo_session.Session(
        hypervisor, source, NAMES, demo_session.Settings(
            topology=vocabulary.Topology.CHAIN,
            downtime_limit_ms=DOWNTIME_LIMIT_MS, election_timeout=60,
            sample_interval=0.5, lag_limit=1 << 30, **settings),
        on_progress=on_progress)
    with shaped.in_netns(network.ns('source')):
        session.start()
    result = session.wait(MAX_S + 120)
    if result.winner is None:
        raise RuntimeError('relay migration failed: %s' % result.error)
    return Measurement(result.total_time_s, result.downtime_ms,
                       max(throttle))


def _direct_destination(hypervisor, source, capabilities):
    hypervisor.direct = True
    try:
        dest = hypervisor.create_destination('d0', source)
    finally:
        hypervisor.direct = False
    dest.start_incoming(capabilities)
    source.set_capabilities(dict(capabilities, events=True))
    source.set_parameters(max_bandwidth=source_stream.UNLIMITED_BANDWIDTH,
                          downtime_limit_ms=DOWNTIME_LIMIT_MS)
    return dest


def _final(process, timeout):
    return process.qmp.wait_event(
        'MIGRATION', lambda e: e.data.get('status') in
        vocabulary.QemuStatus.FINAL, timeout=timeout)


def direct_auto_converge(hypervisor, network, source):
    dest = _direct_destination(hypervisor, source, {'auto-converge': True})
    try:
        started = time.time()
        source.migrate(dest.direct_uri())
        throttle = 0
        done = None
        while done is None and time.time() - started < MAX_S:
            throttle = max(throttle, source.stats().throttle_percent)
            done = _final(dest.process, 0.5)
        if done is None or done.data['status'] != 'completed':
            raise RuntimeError('direct auto-converge failed: %s' % (done,))
        dest.resume()
        resumed = dest.process.qmp.wait_event('RESUME', timeout=10)
        stopped = source.process.qmp.wait_event('STOP', timeout=10)
        return Measurement(resumed.timestamp - started,
                           (resumed.timestamp - stopped.timestamp) * 1000,
                           throttle)
    finally:
        dest.destroy()


def direct_post_copy(hypervisor, network, source):
    capabilities = {'postcopy-ram': True, 'return-path': True}
    dest = _direct_destination(hypervisor, source, capabilities)
    try:
        started = time.time()
        source.migrate(dest.direct_uri())
        while source.stats().iterations < 2:
            if time.time() - started > MAX_S:
                raise RuntimeError('the first pass did not end')
            time.sleep(0.1)
        source.process.qmp.execute('migrate-start-postcopy')
        active = dest.process.qmp.wait_event(
            'MIGRATION', lambda e: e.data.get('status') == 'postcopy-active',
            timeout=60)
        if active is None:
            raise RuntimeError('post-copy did not start')
        # Destinations start paused (-S), as multi-destination ones must.
        dest.process.qmp.execute('cont')
        resumed = dest.process.qmp.wait_event('RESUME', timeout=10)
        stopped = source.process.qmp.wait_event('STOP', timeout=10)
        done = _final(dest.process, MAX_S)
        if done is None or done.data['status'] != 'completed':
            raise RuntimeError('post-copy failed: %s' % (done,))
        return Measurement(done.timestamp - started,
                           (resumed.timestamp - stopped.timestamp) * 1000,
                           postcopy_s=done.timestamp - resumed.timestamp)
    finally:
        dest.destroy()


def measure(case, hypervisor, network, image, memory_mb):
    process = hypervisor.boot('source', memory_mb=memory_mb, image=image)
    try:
        source = hypervisor.source(process)
        if case == 'relay N=3 auto-converge':
            return relay(hypervisor, network, source,
                         capabilities={'auto-converge': True},
                         completion_timeout=MAX_S)
        if case == 'relay N=3 force complete':
            return relay(hypervisor, network, source,
                         completion_timeout=FORCE_AFTER_S,
                         timeout_action=(
                             vocabulary.TimeoutAction.FORCE_COMPLETE))
        if case == 'direct auto-converge':
            return direct_auto_converge(hypervisor, network, source)
        return direct_post_copy(hypervisor, network, source)
    finally:
        hypervisor.destroy_all()
        hypervisor.processes = []


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(value, pattern):
    return '-' if value is None else pattern % value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repetitions', type=int, default=2)
    parser.add_argument('--memory', type=int, default=64, metavar='MiB')
    parser.add_argument('--rate', type=int, default=40, metavar='Mbit/s')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    image = guest.DirtyingGuest(dirty_size=8 * MiB, fill_size=16 * MiB,
                                pages_per_tick=32)
    report = results.Report('busy_guest', 'A guest that dirties memory '
                            'faster than its link', argv)
    description = (
        'Guest: %d MiB RAM, 16 MiB written once, then 32 pages of an 8 MiB '
        'range dirtied per 1 kHz tick (128 MB/s: it does not converge on '
        'its own); QEMU TCG; host links shaped to %d Mbit/s; downtime '
        'limit %d ms; force complete after %d s.'
        % (args.memory, args.rate, DOWNTIME_LIMIT_MS, FORCE_AFTER_S))
    print(description)
    report.note(description)
    network = shaped.ShapedNetwork(['source'] + NAMES, args.rate)
    hypervisor = shaped.BenchHypervisor(network)
    samples = {case: [] for case in CASES}
    failures = {case: [] for case in CASES}
    try:
        network.create()
        for rep in range(args.repetitions):
            order = CASES[rep % len(CASES):] + CASES[:rep % len(CASES)]
            for case in order:
                try:
                    samples[case].append(measure(case, hypervisor, network,
                                                 image, args.memory))
                except RuntimeError as exc:
                    failures[case].append(str(exc))
                sys.stdout.write('.')
                sys.stdout.flush()
    finally:
        hypervisor.destroy_all()
        network.remove()
    rows = []
    for case in CASES:
        runs = samples[case]
        rows.append((
            case, '%d/%d' % (len(runs), args.repetitions),
            _fmt(_median(m.total_s for m in runs), '%.1f'),
            _fmt(_median(m.downtime_ms for m in runs), '%.0f'),
            _fmt(_median(m.throttle for m in runs), '%d%%'),
            _fmt(_median(m.postcopy_s for m in runs), '%.1f')))
    headers = ('case', 'completed', 'total s', 'downtime ms',
               'max throttle', 'post-copy phase s')
    print()
    for row in [headers] + rows:
        print('%-26s %9s %8s %11s %12s %17s' % row)
    report.table('Medians of %d' % args.repetitions, headers, rows,
                 notes=['%s failed: %s' % (case, '; '.join(reasons))
                        for case, reasons in failures.items() if reasons])
    for path in report.write():
        print('wrote %s' % path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
