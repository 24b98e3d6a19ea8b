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

"""The benchmarks' "cores busy" figure: busy CPU over a measured interval.

Every benchmark table reports it through ``results.BusyCores``; a case
at the machine's core count is bound by CPU, so the arithmetic behind
that claim must hold.
"""

import threading

from benchmarks import results
from tests import base


class TestCoresBusy(base.TestCase):

    # (wall time, busy CPU seconds): 2 cores busy from 10 to 11, then 0.5.
    SAMPLES = [(10.0, 100.0), (11.0, 102.0), (13.0, 103.0)]

    def test_interval_on_samples(self):
        self.assertEqual(2.0, results.cores_busy(self.SAMPLES, 10.0, 11.0))
        self.assertEqual(1.0, results.cores_busy(self.SAMPLES, 10.0, 13.0))

    def test_interval_between_samples_is_interpolated(self):
        self.assertAlmostEqual(101.0, results.busy_at(self.SAMPLES, 10.5))
        self.assertAlmostEqual(102.5, results.busy_at(self.SAMPLES, 12.0))
        # Half a second at 2 cores, one second at 0.5: 1.5 s over 1.5 s.
        self.assertAlmostEqual(
            1.0, results.cores_busy(self.SAMPLES, 10.5, 12.0))

    def test_interval_outside_the_samples_is_refused(self):
        for start, end in ((9.0, 11.0), (10.0, 13.5)):
            exc = self.assertRaises(ValueError, results.cores_busy,
                                    self.SAMPLES, start, end)
            self.assertIn('outside the sampled interval 10.000 to 13.000',
                          str(exc))
        exc = self.assertRaises(ValueError, results.busy_at, [], 1.0)
        self.assertIn('(none)', str(exc))

    def test_empty_interval_is_refused(self):
        exc = self.assertRaises(ValueError, results.cores_busy,
                                self.SAMPLES, 11.0, 11.0)
        self.assertIn('must end after it starts', str(exc))

    def test_samples_on_entry_and_exit(self):
        clock = iter([10.0, 14.0])
        busy = iter([100.0, 106.0])
        # A period longer than the test: only entry and exit sample.
        with results.BusyCores(period=3600, read=lambda: next(busy),
                               clock=lambda: next(clock)) as meter:
            pass
        self.assertEqual([(10.0, 100.0), (14.0, 106.0)], meter.samples)
        self.assertEqual(1.5, meter.cores(10.0, 14.0))
        self.assertEqual(1.5, meter.cores(11.0, 13.0))

    def test_samples_while_open(self):
        reads = []
        third = threading.Event()

        def read():
            reads.append(len(reads))
            if len(reads) == 3:
                third.set()
            return float(len(reads))

        ticks = iter(range(1000))
        with results.BusyCores(period=0.001, read=read,
                               clock=lambda: float(next(ticks))) as meter:
            self.assertTrue(third.wait(60))
        self.assertGreaterEqual(len(meter.samples), 4)
        times = [t for t, _ in meter.samples]
        self.assertEqual(sorted(times), times)
        # One CPU second per tick of this clock: one core busy.
        self.assertEqual(1.0, meter.cores(0.0, float(len(times) - 1)))

    def test_this_machine(self):
        before = results.busy_cpu_seconds()
        self.assertGreater(before, 0)
        self.assertGreaterEqual(results.busy_cpu_seconds(), before)
