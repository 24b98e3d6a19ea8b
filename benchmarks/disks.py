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

"""Benchmark: local-disk migration to N destinations against QEMU's own.

``python -m benchmarks.disks`` (``tools/run bench disks``) times, on the
same guest and interleaved so that machine load hits every case alike,
the total time and the downtime of a guest with a local qcow2 disk over
a base image (Nova's image backend), its top image half written:

* direct: QEMU's own block migration into one destination, as libvirt
  does it: the destination serves its disk over NBD on the network, the
  source mirrors into it (``blockdev-mirror``, ``sync: top``), migrates
  memory once the mirror is ready, and ends the mirror while paused
  before the switch-over;
* the disk relay and the memory relay with N = 1 and 3 destinations,
  star and chain (``disk_copy.DiskCopy`` under ``SourceStream``), the
  first destination whose copy completes resumed.

Both use ``copy-mode: write-blocking``. Hosts are network namespaces
whose links are shaped as in ``benchmarks.dataplane`` (reused from
there). Total time: the start of the disk mirror to the winner's RESUME
event; downtime: the source's STOP event to that RESUME event. The last
column is the written part of the disk over the total time.
"""

import argparse
import contextlib
import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks import dataplane
from benchmarks import results
from nova_multidest.dataplane import disk_copy
from nova_multidest.dataplane import guest
from nova_multidest.dataplane import protocol
from nova_multidest.dataplane import qemu
from nova_multidest.dataplane import relay
from nova_multidest.dataplane import source_stream
from nova_multidest import vocabulary

MiB = 1 << 20
CASES = [('direct', 'direct', 1)] + [
    ('%s N=%d' % (topology, n), topology, n)
    for topology in ('star', 'chain') for n in (1, 3)]
NBD_PORT = 10809
WAIT = 600
SETTINGS = source_stream.StreamSettings(
    max_bandwidth=source_stream.UNLIMITED_BANDWIDTH, downtime_limit_ms=300,
    sample_interval=0.05)


class DiskDestination(dataplane.HostedDestination):
    """A destination whose disk agent listens on its simulated host."""

    def open_disk_stream(self, secret, exports, listen=('127.0.0.1', 0),
                         tls=None, forward_tls=None):
        if self.network is None:
            return super().open_disk_stream(secret, exports, listen)
        with dataplane.in_netns(self.network.ns(self.host)):
            return super().open_disk_stream(
                secret, exports, (self.network.addresses[self.host], 0))


class DiskBenchHypervisor(dataplane.BenchHypervisor):

    def create_destination(self, name, source):
        hosted = super().create_destination(name, source)
        dest = DiskDestination(hosted.process)
        dest.network, dest.host, dest.direct = (
            hosted.network, hosted.host, hosted.direct)
        return dest


def make_images(directory, disk_mb, written_mb):
    """A base image and a top image over it, ``written_mb`` written."""
    base = os.path.join(directory, 'base.qcow2')
    qemu.create_image(base, disk_mb * MiB)
    top = os.path.join(directory, 'vda.qcow2')
    qemu.create_image(top, disk_mb * MiB, backing=base)
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c',
                    'write -P 0x5a 0 %dM' % written_mb, top],
                   check=True, capture_output=True)
    return top


def _events(process, names):
    """A queue of ``process``'s QMP events named in ``names``."""
    events = queue.Queue()
    process.qmp.add_event_callback(
        lambda event: events.put(event) if event.name in names else None)
    return events


def _take(events, name, status=None, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while True:
        event = events.get(timeout=max(0.0, deadline - time.monotonic()))
        if event.name == name and (
                status is None or event.data.get('status') in status):
            return event


def migrate_direct(hypervisor, source):
    """QEMU's own block migration into one destination, over the network."""
    hypervisor.direct = True
    try:
        dest = hypervisor.create_destination('d0', source)
    finally:
        hypervisor.direct = False
    process = source.process
    host = ('127.0.0.1' if hypervisor.network is None
            else hypervisor.network.addresses['d0'])
    try:
        dest.start_incoming()
        dest_qmp = dest.process.qmp
        dest_qmp.execute('nbd-server-start', addr={
            'type': 'inet', 'data': {'host': host, 'port': str(NBD_PORT)}})
        dest_qmp.execute('block-export-add', type='nbd', id='export-vda',
                         name='vda', writable=True,
                         **{'node-name': dest.process.disk('vda').node})
        source_events = _events(process, (
            'BLOCK_JOB_READY', 'BLOCK_JOB_COMPLETED', 'MIGRATION', 'STOP'))
        dest_events = _events(dest.process, ('MIGRATION', 'RESUME'))
        source.set_capabilities({'events': True,
                                 'pause-before-switchover': True})
        source.set_parameters(max_bandwidth=SETTINGS.max_bandwidth,
                              downtime_limit_ms=SETTINGS.downtime_limit_ms)
        started = time.time()
        process.qmp.execute('blockdev-add', **{
            'driver': 'nbd', 'node-name': 'direct-target', 'export': 'vda',
            'server': {'type': 'inet', 'host': host,
                       'port': str(NBD_PORT)}})
        process.qmp.execute('blockdev-mirror', **{
            'job-id': 'direct-mirror', 'device': process.disk('vda').node,
            'target': 'direct-target', 'sync': 'top',
            'copy-mode': 'write-blocking'})
        _take(source_events, 'BLOCK_JOB_READY')
        source.migrate(dest.direct_uri())
        _take(source_events, 'MIGRATION',
              (vocabulary.QemuStatus.PRE_SWITCHOVER,))
        process.qmp.execute('block-job-cancel', device='direct-mirror')
        _take(source_events, 'BLOCK_JOB_COMPLETED')
        process.qmp.execute('blockdev-del', **{'node-name': 'direct-target'})
        source.continue_migration()
        _take(dest_events, 'MIGRATION', (vocabulary.QemuStatus.COMPLETED,))
        dest_qmp.execute('block-export-del', id='export-vda')
        dest_qmp.execute('nbd-server-stop')
        dest_qmp.execute('cont')
        resumed = _take(dest_events, 'RESUME')
        stopped = process.qmp.wait_event('STOP', timeout=10)
        return dataplane.Measurement(
            resumed.timestamp - started,
            (resumed.timestamp - stopped.timestamp) * 1000)
    finally:
        dest.destroy()


def migrate_relay(hypervisor, source, topology, count):
    network = hypervisor.network
    secret = protocol.new_secret()
    disks = source.local_disks()
    dests, memory, disk = {}, [], []
    completed = queue.Queue()
    try:
        for name in ['d%d' % i for i in range(count)]:
            dest = hypervisor.create_destination(name, source)
            dests[name] = dest
            dest.process.qmp.add_event_callback(
                lambda event, name=name: completed.put(name) if (
                    event.name == 'MIGRATION' and event.data.get('status') ==
                    vocabulary.QemuStatus.COMPLETED) else None)
            dest.start_incoming()
            exports = dest.export_disks(disks)
            memory.append((name, dest.open_stream(secret)))
            disk.append((name, dest.open_disk_stream(secret, exports)))
        context = (dataplane.in_netns(network.ns('source'))
                   if network is not None else contextlib.nullcontext())
        with context:
            copy = disk_copy.DiskCopy(source, disks, disk, secret,
                                      topology=topology, lag_limit=1 << 30)
            stream = source_stream.SourceStream(
                source, relay.StreamRelay(secret, memory, topology=topology,
                                          lag_limit=1 << 30),
                SETTINGS, disks=copy)
            started = time.time()
            stream.start(lambda func: threading.Thread(
                target=func, daemon=True).start())
        try:
            winner = dests[completed.get(timeout=WAIT)]
            if winner._disk_writer.wait(WAIT) != 'complete':
                raise RuntimeError('the winner\'s disks are not copied: %s'
                                   % winner.disk_copy_reason())
            winner.resume()
            resumed = winner.process.qmp.wait_event('RESUME', timeout=10)
            stopped = source.process.qmp.wait_event('STOP', timeout=10)
            return dataplane.Measurement(
                resumed.timestamp - started,
                (resumed.timestamp - stopped.timestamp) * 1000)
        finally:
            stream.close()
    finally:
        for dest in dests.values():
            dest.destroy()


def measure(hypervisor, image, top, case, written_mb):
    label, topology, count = case
    process = hypervisor.boot('source', memory_mb=64, image=image,
                              disks=[qemu.QemuDisk('vda', top)])
    try:
        source = hypervisor.source(process)
        if topology == 'direct':
            result = migrate_direct(hypervisor, source)
        else:
            result = migrate_relay(hypervisor, source, topology, count)
        # The written part of the disk over the whole migration time.
        result.per_destination_mbs = written_mb / result.total_s
        return result
    finally:
        hypervisor.destroy_all()
        hypervisor.processes = []


def run_series(title, hypervisor, image, top, written_mb, repetitions, out,
               report):
    samples = {case[0]: [] for case in CASES}
    for rep in range(repetitions):
        order = CASES[rep % len(CASES):] + CASES[:rep % len(CASES)]
        for case in order:
            samples[case[0]].append(
                measure(hypervisor, image, top, case, written_mb))
            out.write('.')
            out.flush()
    out.write('\n')
    dataplane.print_table(title, samples, repetitions, out, report)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='benchmarks.disks',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('--repetitions', type=int, default=3)
    parser.add_argument('--disk', type=int, default=1024, metavar='MiB',
                        help='virtual size of the disk (default 1024); '
                             'half of it is written')
    parser.add_argument('--rate', type=int, default=1000, metavar='Mbit/s',
                        help='shaped link rate (default 1000)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if os.geteuid() != 0:
        sys.stdout.write('The benchmark needs root (network namespaces and '
                         'tc); not run.\n')
        return 1
    out = sys.stdout
    report = results.Report(
        'disks', 'Local-disk migration: disk relay against QEMU\'s own '
        'block migration', argv)
    description = ('Guest: 64 MiB RAM (16 pages dirtied per 1 kHz tick), '
                   'one qcow2 disk of %d MiB over a base image, %d MiB of '
                   'its top image written; links shaped to %d Mbit/s; '
                   'downtime limit %d ms; QEMU TCG.'
                   % (args.disk, args.disk // 2, args.rate,
                      SETTINGS.downtime_limit_ms))
    out.write(description + '\n')
    report.note(description)
    image = guest.DirtyingGuest(pages_per_tick=16)
    network = dataplane.ShapedNetwork(['source', 'd0', 'd1', 'd2'],
                                      args.rate)
    hypervisor = DiskBenchHypervisor(network)
    with tempfile.TemporaryDirectory(prefix='multidest-bench-') as images:
        top = make_images(images, args.disk, args.disk // 2)
        try:
            network.create()
            run_series('Shaped links, %d Mbit/s per host link' % args.rate,
                       hypervisor, image, top, args.disk // 2,
                       args.repetitions, out, report)
        finally:
            hypervisor.destroy_all()
            network.remove()
    for path in report.write():
        out.write('wrote %s\n' % path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
