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

"""Warm-up exit conditions, on synthetic samples."""

import math

import testtools

from nova_multidest.dataplane import hypervisor as hv
from nova_multidest.dataplane import warmup
from nova_multidest import vocabulary

MiB = 1 << 20


def stats(iterations, transferred, remaining=0, dirty_rate=0.0,
          bandwidth=0.0):
    return hv.MigrationStats(status=vocabulary.QemuStatus.ACTIVE,
                             transferred=transferred, remaining=remaining,
                             total=64 * MiB, dirty_rate=dirty_rate,
                             bandwidth=bandwidth, iterations=iterations)


def dests(**received):
    return {name: warmup.DestinationSample(value)
            for name, value in received.items()}


class CopiedConditionTest(testtools.TestCase):

    def test_not_ready_during_first_pass(self):
        monitor = warmup.WarmUpMonitor(vocabulary.WarmUpExit.COPIED, 100, 500)
        state = monitor.update(0.0, stats(1, 10 * MiB, 50 * MiB), 10 * MiB,
                               dests(a=10 * MiB))
        self.assertFalse(state.ready)

    def test_ready_once_destination_received_the_first_pass(self):
        monitor = warmup.WarmUpMonitor(vocabulary.WarmUpExit.COPIED, 100, 500)
        state = monitor.update(0.0, stats(2, 64 * MiB), 64 * MiB,
                               dests(a=64 * MiB, b=30 * MiB))
        self.assertEqual(['a'], state.ready_destinations)
        self.assertFalse(state.ready)
        # The mark stays where the first pass ended, though the source
        # keeps sending.
        state = monitor.update(0.1, stats(5, 90 * MiB), 90 * MiB,
                               dests(a=90 * MiB, b=64 * MiB))
        self.assertEqual(['a', 'b'], state.ready_destinations)
        self.assertTrue(state.ready)

    def test_percentage_of_live_destinations(self):
        monitor = warmup.WarmUpMonitor(vocabulary.WarmUpExit.COPIED, 50, 500)
        state = monitor.update(0.0, stats(2, 64 * MiB), 64 * MiB,
                               dests(a=64 * MiB, b=1, c=1))
        self.assertFalse(state.ready)  # 1 of 3 < 50 %
        samples = dests(a=64 * MiB, b=1, c=1)
        samples['c'].live = False
        state = monitor.update(0.1, stats(2, 64 * MiB), 64 * MiB, samples)
        self.assertTrue(state.ready)   # 1 of 2 live >= 50 %

    def test_no_live_destination_is_never_ready(self):
        monitor = warmup.WarmUpMonitor(vocabulary.WarmUpExit.COPIED, 1, 500)
        samples = dests(a=64 * MiB)
        samples['a'].live = False
        self.assertFalse(monitor.update(0.0, stats(3, 64 * MiB), 64 * MiB,
                                        samples).ready)


class DowntimeConditionTest(testtools.TestCase):

    def _monitor(self, limit_ms=500, percent=100):
        """A monitor one second into the migration, nothing received."""
        monitor = warmup.WarmUpMonitor(vocabulary.WarmUpExit.DOWNTIME,
                                       percent, limit_ms)
        monitor.update(0.0, stats(2, 0), 0, dests(a=0, b=0))
        monitor.update(1.0, stats(2, 0), 0, dests(a=0, b=0))
        return monitor

    def test_uses_backlog_dirty_memory_and_delivery_rate(self):
        monitor = self._monitor()
        # a received 100 MiB in 1 s, b 10 MiB (smoothed with the idle
        # second before: 50 and 5 MiB/s). The source did 10 syncs in that
        # second while the guest dirtied 10 MiB/s: 1 MiB per period.
        state = monitor.update(
            2.0, stats(12, 100 * MiB, remaining=4 * MiB,
                       dirty_rate=10 * MiB), 100 * MiB,
            dests(a=100 * MiB, b=10 * MiB))
        # a: 5 MiB pending / 50 MiB/s.
        self.assertAlmostEqual(100.0, state.expected_downtime_ms['a'])
        # b: (5 MiB pending + 90 MiB backlog) / 5 MiB/s.
        self.assertAlmostEqual(19000.0, state.expected_downtime_ms['b'])
        self.assertEqual(['a'], state.ready_destinations)
        self.assertFalse(state.ready)

    def test_not_ready_before_qemu_measured_the_dirty_rate(self):
        monitor = warmup.WarmUpMonitor(vocabulary.WarmUpExit.DOWNTIME,
                                       100, 500)
        monitor.update(0.0, stats(2, 0), 0, dests(a=0))
        # Looks idle, but QEMU has not measured anything yet.
        state = monitor.update(0.5, stats(3, 10 * MiB), 10 * MiB,
                               dests(a=10 * MiB))
        self.assertEqual(0.0, state.expected_downtime_ms['a'])
        self.assertFalse(state.ready)

    def test_not_ready_before_the_first_pass_completed(self):
        monitor = warmup.WarmUpMonitor(vocabulary.WarmUpExit.DOWNTIME,
                                       100, 500)
        state = monitor.update(0.0, stats(1, 0, remaining=0), 0,
                               dests(a=0))
        self.assertFalse(state.ready)

    def test_nothing_pending_means_no_downtime(self):
        monitor = self._monitor(limit_ms=1)
        state = monitor.update(2.0, stats(3, 10 * MiB), 10 * MiB,
                               dests(a=10 * MiB, b=10 * MiB))
        self.assertEqual(0.0, state.expected_downtime_ms['a'])
        self.assertTrue(state.ready)

    def test_no_rate_known_means_infinite_downtime(self):
        monitor = warmup.WarmUpMonitor(vocabulary.WarmUpExit.DOWNTIME,
                                       100, 500)
        state = monitor.update(0.0, stats(2, 10 * MiB, remaining=MiB),
                               10 * MiB, dests(a=10 * MiB))
        self.assertTrue(math.isinf(state.expected_downtime_ms['a']))
        self.assertFalse(state.ready)
