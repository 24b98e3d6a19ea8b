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

"""Benchmark: request-to-ACTIVE of multi-destination live migration.

``python -m benchmarks.controlplane`` (``tools/run bench controlplane``)
runs Nova's functional harness (real API, conductor, scheduler, placement,
Neutron fixture; five computes on MultiDestLibvirtDriver over Nova's fake
libvirt, the fake hypervisor extension simulating the stream) and times,
on the same server, interleaved so that machine load hits every case
alike:

* nova: Nova's own single-destination live migration (os-migrateLive to a
  named host);
* N = 2, 3, 4: os-migrateLive-multi to that many named hosts.

Request-to-ACTIVE: from the POST until the server is ACTIVE, with no task,
on its new host (read from Nova's database every 10 ms). It prints the
medians and their ratio to Nova's own live migration, and the CPU time
the harness process spent meanwhile: every service of the harness runs in
this one Python process, so what N computes, the scheduler and the
conductor do at once in a cloud shares one interpreter here. Neither path
moves guest memory: this measures the control plane alone. The table goes
to ``benchmarks/results/controlplane.md``.
"""

import argparse
import statistics
import sys
import time
import unittest

from benchmarks import results
from nova_multidest import vocabulary
from tests.functional import base

POLL_SECONDS = 0.01
CASES = ('nova', 'N=2', 'N=3', 'N=4')


class ControlPlaneBenchmark(base.MultiDestMigrationTestBase):

    COMPUTES = 5
    repetitions = 5
    # Class-level: Nova's TestCase clears instance attributes at clean-up.
    samples = {}
    cpu = {}

    def test_benchmark(self):
        self.server = self.boot_server(
            host=self.hostnames[0],
            networks=[{'port': self.neutron.port_1['id']}])
        self.samples.update({case: [] for case in CASES})
        self.cpu.update({case: [] for case in CASES})
        for repetition in range(self.repetitions):
            # Rotate the order so that no case always runs first.
            shift = repetition % len(CASES)
            for case in CASES[shift:] + CASES[:shift]:
                cpu_before = time.process_time()
                self.samples[case].append(self.measure(case))
                self.cpu[case].append(self.cpu_at_active - cpu_before)

    def others(self, count):
        host = self.get_instance(self.server['id']).host
        others = [h for h in self.hostnames if h != host]
        return others[:count]

    def measure(self, case):
        before = self.get_instance(self.server['id']).host
        start = time.monotonic()
        if case == 'nova':
            [target] = self.others(1)
            self.admin_api.post_server_action(
                self.server['id'],
                {'os-migrateLive': {'host': target,
                                    'block_migration': 'auto'}})
        else:
            self.request_migration(
                self.server, destinations=self.others(int(case[2:])))
        instance = base.wait_until(
            lambda: self.moved_and_active(before), timeout=120,
            interval=POLL_SECONDS, message='%s never became ACTIVE' % case)
        elapsed = time.monotonic() - start
        self.cpu_at_active = time.process_time()
        # Nova, like us, finishes its bookkeeping after the server is
        # ACTIVE on its new host; the next case starts once it is done.
        base.wait_until(self.migrations_final, timeout=120)
        if case == 'nova':
            # Nova marks its Migration completed before it deletes the
            # allocation that Migration held.
            base.wait_until(lambda: self.invariants_hold(instance.host),
                            timeout=120)
        else:
            self.wait_for_group_end(self.server)
        self.assert_invariants(self.server, instance.host)
        return elapsed

    def invariants_hold(self, host):
        try:
            self.assert_invariants(self.server, host)
        except AssertionError:
            return False
        return True

    def migrations_final(self):
        return all(m.status in vocabulary.MigrationStatus.NOVA_FINAL
                   for m in self.get_migrations(self.server['id']))

    def moved_and_active(self, before):
        instance = self.get_instance(self.server['id'])
        if (instance.host != before and instance.vm_state == 'active' and
                instance.task_state is None):
            return instance
        return None


def run(repetitions):
    ControlPlaneBenchmark.repetitions = repetitions
    ControlPlaneBenchmark.samples = samples = {}
    ControlPlaneBenchmark.cpu = cpu = {}
    case = ControlPlaneBenchmark('test_benchmark')
    result = unittest.TestResult()
    case.run(result)
    for _, trace in result.errors + result.failures:
        print(trace, file=sys.stderr)
    if not result.wasSuccessful():
        raise SystemExit('benchmark failed')
    return samples, cpu


def new_report(argv=None):
    """The results file; made before the run, to keep the load before it."""
    return results.Report(
        'controlplane', 'Control plane: request to ACTIVE against Nova\'s '
        'own live migration', argv)


def report(samples, cpu, out):
    out.note('Nova\'s functional harness (real nova-api, nova-conductor, '
             'nova-scheduler, placement, Neutron fixture; %d computes on '
             'MultiDestLibvirtDriver over Nova\'s fake libvirt), one server '
             'migrated back and forth, the cases interleaved. "nova" is '
             'Nova\'s own live migration to one named host '
             '(os-migrateLive); "N=k" the multi-destination one to k named '
             'hosts (os-migrateLive-multi). Request to ACTIVE: from the POST '
             'until Nova\'s database shows the server ACTIVE, with no task, '
             'on another host. CPU s: the CPU time of the one process that '
             'runs every service of the harness, over the same interval.'
             % ControlPlaneBenchmark.COMPUTES)
    baseline = statistics.median(samples['nova'])
    print('%-6s %5s %10s %8s %8s %8s %8s' % (
        'case', 'runs', 'median s', 'min s', 'x nova', 'CPU s', 'CPU/wall'))
    rows, ratios = [], []
    for case in CASES:
        values = samples[case]
        median = statistics.median(values)
        cpu_median = statistics.median(cpu[case])
        print('%-6s %5d %10.3f %8.3f %7.2fx %8.3f %8.2f' % (
            case, len(values), median, min(values), median / baseline,
            cpu_median, cpu_median / median))
        rows.append((case, len(values), '%.3f' % median,
                     '%.3f' % min(values), '%.2fx' % (median / baseline),
                     '%.3f' % cpu_median, '%.2f' % (cpu_median / median)))
        ratios.append(median / baseline)
    out.table('Medians of %d' % len(samples['nova']),
              ('case', 'runs', 'request to ACTIVE s', 'min s', 'x nova',
               'CPU s', 'CPU / wall'), rows,
              notes=['Target (issue 11): N=4 within 1.3x of Nova\'s own.'])
    out.chart('Request to ACTIVE, x Nova\'s own live migration', list(CASES),
              ratios, 'x nova', 1.0, 'nova')
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repetitions', type=int, default=5,
                        help='interleaved rounds over every case')
    parser.add_argument('--no-write', action='store_true',
                        help='print only; leave benchmarks/results alone')
    args = parser.parse_args(argv)
    out = new_report(argv)
    report(*run(args.repetitions), out=out)
    if not args.no_write:
        for path in out.write():
            print('wrote %s' % path)


if __name__ == '__main__':
    main()
