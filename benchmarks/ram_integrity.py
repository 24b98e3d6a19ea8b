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

"""Loop: does a migrated guest's RAM match its paused source?

``python -m benchmarks.ram_integrity`` repeats the busy guest's
migration of ``tests/dataplane/test_busy_guest.py`` (the same guest, the
same shaped links, the same downtime limit, auto-converge or not) in
variants that differ only in what carries the stream, interleaved so
that machine load hits each alike:

* ``direct``: QEMU to QEMU over the shaped link, driven by the same
  source engine (``source_stream.SourceStream``) as the relayed ones;
* ``star1``, ``star3``, ``chain3``: through the relay and agents
  (``demo_session.Session``), star or chain, to 1 or 3 destinations.

Before any destination may run, the paused source and every destination
whose stream completed are compared page by page. One JSON line per run
goes to ``--out`` (appended, so runs can be split into short chunks):
the variant, the differing pages of each destination and, for the first
few, the guest's counter word on both sides. A destination that holds an
older counter than the source lacks a write the source made; copies
that agree with each other but not with the source got one stream that
lacked it. ``--summary`` reads those lines back into a table per
variant (``benchmarks/results/ram_integrity.md``).
"""

import argparse
import json
import logging
import os
import statistics
import struct
import sys
import threading
import time

from benchmarks import dataplane as shaped
from benchmarks import results
from nova_multidest.dataplane import demo_session
from nova_multidest.dataplane import guest
from nova_multidest.dataplane import source_stream
from nova_multidest import vocabulary

MiB = 1 << 20
PAGE = 4096
MEMORY_MB = 64
RATE_MBIT = 40
DOWNTIME_LIMIT_MS = 100
TIMEOUT_S = 240
VARIANTS = {'direct': None,
            'star1': (vocabulary.Topology.STAR, 1),
            'star3': (vocabulary.Topology.STAR, 3),
            'chain3': (vocabulary.Topology.CHAIN, 3)}
HOSTS = ['source', 'd0', 'd1', 'd2']


def image():
    """The guest of tests/dataplane/test_busy_guest.py."""
    return guest.DirtyingGuest(dirty_size=8 * MiB, fill_size=16 * MiB,
                               pages_per_tick=32)


class Run(object):
    """One migration's outcome and its RAM comparison."""

    def __init__(self, variant):
        self.variant = variant
        self.winner = None
        self.error = None
        self.total_s = None
        self.max_throttle = 0
        self.source_state = None
        self.diffs = {}
        self.copies_agree = None
        self.sweep_head = None
        self.detail = {}
        self.load = os.getloadavg()[0]

    def compare(self, source_process, destinations):
        """Dump the paused source and each completed destination."""
        self.source_state = source_process.run_state()
        reference = source_process.memory_image()
        dirty = image()
        data = reference.data
        self.sweep_head = max(
            struct.unpack_from('<I', data, address)[0]
            for address in range(dirty.dirty_start, dirty.dirty_end, PAGE))
        images = {name: dest.process.memory_image()
                  for name, dest in destinations.items()}
        for name, memory in images.items():
            self.diffs[name] = reference.differences(memory)
            # The words around the first few differences, both sides.
            self.detail[name] = [
                (d.address & ~31, reference.words(d.address & ~31, 8),
                 memory.words(d.address & ~31, 8))
                for d in self.diffs[name][:4]]
        names = sorted(images)
        self.copies_agree = all(images[names[0]] == images[n]
                                for n in names[1:])

    def as_dict(self):
        return {'variant': self.variant, 'winner': self.winner,
                'error': self.error, 'total_s': self.total_s,
                'max_throttle': self.max_throttle,
                'source_state': self.source_state,
                'load': self.load,
                'copies_agree': self.copies_agree,
                'differing_pages': {n: len(d) for n, d in self.diffs.items()},
                'sweep_head': self.sweep_head,
                'detail': self.detail,
                'differences': {n: [tuple(x) for x in d[:4096]]
                                for n, d in self.diffs.items()}}


def _completed(dest):
    return dest.migration_status() == vocabulary.QemuStatus.COMPLETED


def run_direct(hypervisor, source, settings, run):
    hypervisor.direct = True
    try:
        dest = hypervisor.create_destination('d0', source)
    finally:
        hypervisor.direct = False
    stream = None
    try:
        dest.start_incoming(settings.shared_capabilities())
        stream = source_stream.SourceStream(
            source, shaped.DirectTarget(dest.direct_uri()), settings,
            on_progress=lambda stats, dests: _throttle(run, stats))
        started = time.time()
        with shaped.in_netns(hypervisor.network.ns('source')):
            stream.start(lambda f: threading.Thread(target=f,
                                                    daemon=True).start())
        done = dest.process.qmp.wait_event(
            'MIGRATION', lambda e: e.data.get('status') in
            vocabulary.QemuStatus.FINAL, timeout=TIMEOUT_S + 60)
        if done is None or done.data['status'] != 'completed':
            run.error = 'destination: %s' % (done and done.data,)
            return
        run.total_s = time.time() - started
        run.winner = 'd0'
        run.compare(source.process, {'d0': dest})
    finally:
        if stream is not None:
            stream.close()
        dest.destroy()


def _throttle(run, stats):
    run.max_throttle = max(run.max_throttle, stats.throttle_percent or 0)


def run_relay(hypervisor, source, settings, run, topology, count):
    names = HOSTS[1:1 + count]
    destinations = {}

    def on_ready(name, dest):
        destinations[name] = dest

    def approve_winner(name):
        live = {n: d for n, d in destinations.items()
                if d.is_alive() and d.migration_status() != 'failed'}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(
                d.migration_status() in ('completed', 'failed')
                for d in live.values()):
            time.sleep(0.05)
        run.compare(source.process,
                    {n: d for n, d in live.items() if _completed(d)})
        return True

    def on_progress(progress):
        run.max_throttle = max(run.max_throttle,
                               source.stats().throttle_percent or 0)

    fields = dict(vars(settings))
    session = demo_session.Session(
        hypervisor, source, names,
        demo_session.Settings(topology=topology, election_timeout=60,
                              **fields),
        approve_winner=approve_winner, on_destination_ready=on_ready,
        on_progress=on_progress)
    try:
        with shaped.in_netns(hypervisor.network.ns('source')):
            session.start()
        result = session.wait(TIMEOUT_S + 120)
        run.winner = result.winner
        run.total_s = result.total_time_s
        if result.winner is None:
            run.error = result.error
    finally:
        session.abort('loop end')


def one(variant, hypervisor, settings):
    run = Run(variant)
    process = hypervisor.boot('source', memory_mb=MEMORY_MB, image=image())
    try:
        source = hypervisor.source(process)
        if VARIANTS[variant] is None:
            run_direct(hypervisor, source, settings, run)
        else:
            run_relay(hypervisor, source, settings, run, *VARIANTS[variant])
    except Exception as exc:
        run.error = 'exception: %r' % exc
    finally:
        hypervisor.destroy_all()
        hypervisor.processes = []
    return run


def summarize(path, argv):
    """Print and write a table per variant of the runs in ``path``."""
    with open(path) as lines:
        runs = [json.loads(line) for line in lines if line.strip()]
    groups = {}
    for run in runs:
        key = (run['variant'], run.get('auto_converge', True))
        groups.setdefault(key, []).append(run)
    headers = ('variant', 'auto-converge', 'runs', 'completed',
               'RAM differs', 'max throttle', 'load at start',
               'median total s')
    rows = []
    for (variant, converge), group in sorted(groups.items()):
        done = [r for r in group if r['winner']]
        bad = [r for r in done if any(r['differing_pages'].values())]
        loads = [r['load'] for r in group]
        rows.append((
            variant, 'yes' if converge else 'no', len(group), len(done),
            len(bad), '%d%%' % max(r['max_throttle'] for r in group),
            '%.1f-%.1f' % (min(loads), max(loads)),
            '%.1f' % statistics.median(r['total_s'] for r in done)
            if done else '-'))
    for row in [headers] + rows:
        print('%-8s %13s %5s %9s %11s %12s %13s %14s' % row)
    report = results.Report('ram_integrity', 'Does the migrated RAM match '
                            'the paused source?', argv)
    report.note(
        'The guest, links and settings of tests/dataplane/'
        'test_busy_guest.py (64 MiB, 32 pages of an 8 MiB range dirtied per '
        '1 kHz tick, %d Mbit/s links, downtime limit %d ms), one '
        'migration per run, variants interleaved; each completed copy is '
        'compared page by page with its paused source before any copy '
        'runs. "RAM differs": runs where at least one copy differs.'
        % (RATE_MBIT, DOWNTIME_LIMIT_MS))
    report.table('Runs', headers, rows, notes=[
        '%s: %s' % (r['variant'], r['error']) for r in runs
        if r['error']])
    for path in report.write():
        print('wrote %s' % path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--variants', default='direct,chain3',
                        help='comma-separated, of: %s' % ', '.join(VARIANTS))
    parser.add_argument('--runs', type=int, default=1,
                        help='runs of each variant')
    parser.add_argument('--budget', type=float, default=0, metavar='S',
                        help='start no run after this many seconds')
    parser.add_argument('--no-auto-converge', action='store_true')
    parser.add_argument('--rate', type=int, default=RATE_MBIT,
                        metavar='Mbit/s')
    parser.add_argument('--out', required=True, help='JSON lines, appended')
    parser.add_argument('--summary', action='store_true',
                        help='only summarize the runs in --out')
    args = parser.parse_args(argv)
    if args.summary:
        summarize(args.out, argv)
        return 0
    logging.basicConfig(level=logging.ERROR)
    variants = args.variants.split(',')
    for variant in variants:
        if variant not in VARIANTS:
            parser.error('unknown variant %r' % variant)
    settings = source_stream.StreamSettings(
        capabilities={} if args.no_auto_converge else {'auto-converge': True},
        downtime_limit_ms=DOWNTIME_LIMIT_MS, completion_timeout=TIMEOUT_S,
        sample_interval=0.5)
    network = shaped.ShapedNetwork(HOSTS, args.rate)
    hypervisor = shaped.BenchHypervisor(network)
    started = time.monotonic()
    try:
        network.create()
        for index in range(args.runs):
            for variant in variants[index % len(variants):] + \
                    variants[:index % len(variants)]:
                if args.budget and time.monotonic() - started > args.budget:
                    return 0
                run = one(variant, hypervisor, settings)
                line = run.as_dict()
                line['auto_converge'] = not args.no_auto_converge
                with open(args.out, 'a') as out:
                    out.write(json.dumps(line) + '\n')
                print('%-7s winner=%s differing=%s throttle=%s%% total=%s '
                      'load=%.2f %s' % (
                          variant, run.winner, line['differing_pages'],
                          run.max_throttle,
                          run.total_s and round(run.total_s, 1), run.load,
                          run.error or ''), flush=True)
    finally:
        hypervisor.destroy_all()
        network.remove()
    return 0


if __name__ == '__main__':
    sys.exit(main())
