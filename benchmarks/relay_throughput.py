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

"""Throughput of the stream relay alone, without QEMU.

The relay must never be what limits a migration: with one destination the
whole migration has to stay within 1.10x of direct QEMU-to-QEMU. This
measures how fast bytes go from a source process through the relay and
the destination agents into sink processes that discard them, for 1..N
destinations, star and chain, against a direct source-to-sink copy.

    tools/run bench relay_throughput [--size-mb 1024] [--max-sinks 3]

Every process runs on this host, so on a machine with few cores the
processes compete for CPU: treat the numbers as a lower bound.

With ``--qemu`` it migrates a real QEMU guest instead, interleaving direct
QEMU-to-QEMU, the relay star with one destination copying every byte
through Python, and the same with the zero-copy (splice) path, so that
the effect of zero-copy shows on the same guest in one run.
"""

import argparse
import logging
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time

from benchmarks import results
from nova_multidest.dataplane import protocol
from nova_multidest.dataplane import relay
from nova_multidest.dataplane import zerocopy

MiB = 2**20
BLOCK = 4 * MiB


def _sink(path, ready, result):
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    ready.set()
    conn, _ = listener.accept()
    buf = bytearray(BLOCK)
    total = 0
    while True:
        n = conn.recv_into(buf)
        if not n:
            break
        total += n
    result.put((path, total, time.monotonic()))
    conn.close()
    listener.close()


def _source(uri, size, start, result):
    family, address = protocol.parse_target(uri)
    block = os.urandom(BLOCK)
    sock = socket.socket(family)
    sock.connect(address)
    start.wait()
    began = time.monotonic()
    sent = 0
    while sent < size:
        sock.sendall(block)
        sent += len(block)
    sock.close()
    result.put(('source', began, time.monotonic()))


def _cpu_seconds():
    times = os.times()
    return times.user + times.system


def _agent(secret, target, address_queue, stop, cpu_queue):
    agent = relay.DestinationAgent(secret, target)
    address_queue.put(agent.start())
    began = _cpu_seconds()
    stop.wait()
    cpu_queue.put(_cpu_seconds() - began)
    agent.close()


def _bare_hop(listen, target, address_queue, stop, cpu_queue):
    """The kernel's share of a hop: socket to pipe to socket, no logic.

    Listens on ``listen`` (a unix path, or None for a loopback TCP port),
    forwards one connection to ``target`` (a unix path or a (host, port)).
    """
    if listen is None:
        listener = socket.create_server(('127.0.0.1', 0))
        address_queue.put(listener.getsockname())
    else:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(listen)
        listener.listen(1)
        address_queue.put(listen)
    upstream, _ = listener.accept()
    began = _cpu_seconds()
    if isinstance(target, str):
        downstream = socket.socket(socket.AF_UNIX)
        downstream.connect(target)
    else:
        downstream = socket.create_connection(tuple(target))
    for sock in (upstream, downstream):
        protocol.tune_socket(sock)
    read_fd, write_fd = os.pipe()
    while True:
        count = os.splice(upstream.fileno(), write_fd, zerocopy.PIPE_BYTES)
        if not count:
            break
        while count:
            count -= os.splice(read_fd, downstream.fileno(), count)
    downstream.close()
    cpu_queue.put(_cpu_seconds() - began)
    stop.wait()


def _relay(secret, destinations, topology, uri_queue, stop, lag_limit):
    stream_relay = relay.StreamRelay(secret, destinations, topology=topology,
                                     lag_limit=lag_limit)
    stream_relay.start()
    uri_queue.put(stream_relay.source_uri)
    began = _cpu_seconds()
    stream_relay.wait_finished(600)
    spent = _cpu_seconds() - began
    uri_queue.put({name: p.state
                   for name, p in stream_relay.progress().items()})
    stop.wait()
    stream_relay.close()
    uri_queue.put(spent)


def run_once(size, sinks, topology, workdir, lag_limit=None):
    """Return ([per-sink MB/s], relay CPU s, [agent CPU s]).

    ``lag_limit`` (bytes, default the stream's size) is the relay's: a
    chain also keeps that many bytes for a repaired hop to resume from.
    """
    ctx = multiprocessing.get_context(os.environ.get('BENCH_START', 'spawn'))
    results = ctx.Queue()
    cpu_queue = ctx.Queue()
    stop = ctx.Event()
    start = ctx.Event()
    processes = []
    paths = []
    try:
        for index in range(sinks):
            path = os.path.join(workdir, '%s-%d-%d.sock'
                                % (topology, sinks, index))
            if os.path.exists(path):
                os.unlink(path)
            ready = ctx.Event()
            proc = ctx.Process(target=_sink, args=(path, ready, results))
            proc.start()
            processes.append(proc)
            ready.wait(30)
            paths.append(path)
        if topology == 'direct':
            uri = 'unix:%s' % paths[0]
        elif topology == 'floor':
            hop_cpu = ctx.Queue()
            queue = ctx.Queue()
            proc = ctx.Process(target=_bare_hop, args=(
                None, paths[0], queue, stop, hop_cpu))
            proc.start()
            processes.append(proc)
            agent_address = queue.get(timeout=30)
            entry = os.path.join(workdir, 'floor-entry.sock')
            if os.path.exists(entry):
                os.unlink(entry)
            proc = ctx.Process(target=_bare_hop, args=(
                entry, agent_address, queue, stop, hop_cpu))
            proc.start()
            processes.append(proc)
            uri = 'unix:%s' % queue.get(timeout=30)
        else:
            secret = protocol.new_secret()
            destinations = []
            for index, path in enumerate(paths):
                queue = ctx.Queue()
                proc = ctx.Process(target=_agent, args=(
                    secret, 'unix:%s' % path, queue, stop, cpu_queue))
                proc.start()
                processes.append(proc)
                destinations.append(('dest%d' % index, queue.get(timeout=30)))
            uri_queue = ctx.Queue()
            proc = ctx.Process(target=_relay, args=(
                secret, destinations, topology, uri_queue, stop,
                lag_limit or size))
            proc.start()
            processes.append(proc)
            uri = uri_queue.get(timeout=30)
        proc = ctx.Process(target=_source, args=(uri, size, start, results))
        proc.start()
        processes.append(proc)
        start.set()
        ends = []
        began = None
        for _ in range(sinks + 1):
            item = results.get(timeout=600)
            if item[0] == 'source':
                began = item[1]
            else:
                if item[1] != size:
                    raise RuntimeError('sink %s got %d of %d bytes'
                                       % (item[0], item[1], size))
                ends.append(item[2])
        rates = [size / (end - began) / 1e6 for end in ends]
        if topology == 'direct':
            return rates, 0.0, []
        if topology == 'floor':
            # The first to finish is the agent-like hop (TCP in, unix out).
            agent_cpu = hop_cpu.get(timeout=60)
            return rates, hop_cpu.get(timeout=60), [agent_cpu]
        states = uri_queue.get(timeout=60)
        if set(states.values()) != {'complete'}:
            raise RuntimeError('destinations did not complete: %s' % states)
        stop.set()
        relay_cpu = uri_queue.get(timeout=60)
        agent_cpu = [cpu_queue.get(timeout=60) for _ in paths]
        return rates, relay_cpu, agent_cpu
    finally:
        stop.set()
        for proc in processes:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()


def measure_qemu(memory_mb, repeat, out):
    """Direct against relay N=1, copying and spliced, on real QEMU."""
    from benchmarks import dataplane as bench
    cases = [('direct', 'direct', 1), ('copying', 'star', 1),
             ('zero-copy', 'star', 1)]
    image = bench.guest.DirtyingGuest(dirty_size=8 * MiB,
                                      fill_size=(memory_mb - 24) * MiB,
                                      pages_per_tick=16)
    samples = {label: [] for label, _, _ in cases}
    hypervisor = bench.BenchHypervisor()
    try:
        # The first migration of a process is slower whatever the case.
        bench.measure(hypervisor, image, memory_mb, cases[0], None)
        for rep in range(repeat):
            for label, topology, count in (cases[rep % 3:] +
                                           cases[:rep % 3]):
                zerocopy.SUPPORTED = label != 'copying'
                try:
                    samples[label].append(bench.measure(
                        hypervisor, image, memory_mb,
                        (label, topology, count), None))
                finally:
                    zerocopy.SUPPORTED = hasattr(os, 'splice')
                out.write('.')
                out.flush()
    finally:
        hypervisor.destroy_all()
    title = ('Real QEMU (TCG), %d MiB guest, %d MiB written, relay star '
             'N=1' % (memory_mb, memory_mb - 24))
    report = results.Report('relay_throughput_qemu', title,
                            benchmark='relay_throughput')
    out.write('\n' + title)
    bench.print_table('', samples, repeat, out, report)
    for path in report.write():
        out.write('wrote %s\n' % path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--size-mb', type=int, default=1024)
    parser.add_argument('--max-sinks', type=int, default=3)
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--lag-limit-mb', type=int, default=256,
                        help='the relay\'s lag limit, as [multidest] '
                             'lag_limit_mb (default: its default). A chain '
                             'keeps that much of the stream for a repaired '
                             'hop, so a limit as large as the stream puts '
                             'every byte in memory touched for the first '
                             'time, which a migration larger than the '
                             'limit pays only for its first MiBs.')
    parser.add_argument('--qemu', action='store_true',
                        help='migrate a real QEMU guest: direct, relay '
                             'copying, relay zero-copy')
    parser.add_argument('--memory', type=int, default=562, metavar='MiB',
                        help='guest RAM with --qemu')
    args = parser.parse_args(argv)
    if args.qemu:
        logging.basicConfig(level=logging.ERROR)
        measure_qemu(args.memory, args.repeat, sys.stdout)
        return 0
    size = args.size_mb * MiB
    rows = [('direct', 1), ('floor', 1)]
    for topology in ('star', 'chain'):
        rows += [(topology, n) for n in range(1, args.max_sinks + 1)]
    report = results.Report('relay_throughput',
                            'Relay throughput, synthetic stream, loopback')
    headers = ('path', 'dests', 'slowest MB/s', 'share of direct',
               'relay CPU s/GiB', 'agent CPU s/GiB (mean)',
               'agent CPU s/GiB (max)')
    print('Per destination: MB/s of the slowest, and CPU seconds per GiB '
          'of stream spent by the relay and by each agent (a CPU-bound '
          'process moves 1/that GiB/s).')
    print('%-7s %5s %12s %9s %14s %14s %14s' % (
        'path', 'dests', 'slowest MB/s', 'of direct', 'relay CPU s/GiB',
        'agent mean', 'agent max'))
    direct = None
    gib = size / 2**30
    table = []
    with tempfile.TemporaryDirectory(prefix='relay-bench-') as workdir:
        for topology, sinks in rows:
            runs = [run_once(size, sinks, topology, workdir,
                             args.lag_limit_mb * MiB)
                    for _ in range(args.repeat)]
            slowest = statistics.median(min(r[0]) for r in runs)
            if direct is None:
                direct = slowest
            relay_cpu = statistics.median(r[1] for r in runs) / gib
            agent_cpu = agent_max = 0.0
            if topology != 'direct':
                agent_cpu = statistics.median(
                    statistics.mean(r[2]) for r in runs) / gib
                agent_max = statistics.median(max(r[2]) for r in runs) / gib
            print('%-7s %5d %12.0f %8.2fx %14.3f %14.3f %14.3f' % (
                topology, sinks, slowest, slowest / direct, relay_cpu,
                agent_cpu, agent_max))
            sys.stdout.flush()
            table.append((topology, sinks, slowest, slowest / direct,
                          relay_cpu, agent_cpu, agent_max))
    label = ['%s N=%d' % (t, n) if t != 'direct' else t
             for t, n, *_ in table]
    report.table(
        'Medians of %d runs of %d MiB, %s, lag limit %d MiB' % (
            args.repeat, args.size_mb,
            'zero-copy' if zerocopy.TEE_SUPPORTED else 'copying',
            args.lag_limit_mb),
        headers,
        [(t, n, '%.0f' % mbs, '%.2fx' % share,
          '-' if t == 'direct' else '%.3f' % rc,
          '-' if t == 'direct' else '%.3f' % ac,
          '-' if t == 'direct' else '%.3f' % am)
         for t, n, mbs, share, rc, ac, am in table],
        notes=['Targets (issue 11): relay and each agent at most 0.15 CPU '
               's/GiB; star N=1 and chain N=1..3 at least 0.6x direct. '
               'Every process (source, relay, agents, sinks) shares this '
               'host\'s cores.',
               '"floor" is the kernel\'s share of the same two hops: two '
               'processes that only splice(2) socket to pipe to socket, '
               'in the relay\'s and an agent\'s places (unix to TCP, TCP to '
               'unix), without framing, authentication or any logic. On '
               'loopback the sender\'s CPU time also pays the receiving '
               'side of the TCP stack, so no relay can go below it here.'])
    report.chart('Slowest destination, MB/s (dashed: direct)', label,
                 [row[2] for row in table], 'MB/s', direct, 'direct')
    report.chart('CPU seconds per GiB: relay (dashed: target 0.15)',
                 label[1:], [row[4] for row in table[1:]], 's/GiB', 0.15,
                 'target')
    report.chart('CPU seconds per GiB: busiest agent (dashed: target 0.15)',
                 label[1:], [row[6] for row in table[1:]], 's/GiB', 0.15,
                 'target')
    for path in report.write():
        print('wrote %s' % path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
