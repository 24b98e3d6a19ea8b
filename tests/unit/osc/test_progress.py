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

import io

import testtools

from nova_multidest.osc import progress


def migration(mid, dest, status, total=1000, remaining=None, processed=0):
    return {'id': mid, 'dest_compute': dest, 'status': status,
            'memory_total_bytes': total, 'memory_remaining_bytes': remaining,
            'memory_processed_bytes': processed}


class FakeTerminal(io.StringIO):

    def isatty(self):
        return True


class TestPercent(testtools.TestCase):

    def test_from_remaining(self):
        self.assertEqual(75, progress.percent(
            migration(1, 'c2', 'running', remaining=250)))

    def test_from_processed_when_remaining_unknown(self):
        self.assertEqual(30, progress.percent(
            migration(1, 'c2', 'running', processed=300)))

    def test_completed_is_full_and_unknown_total_is_empty(self):
        self.assertEqual(100, progress.percent(
            migration(1, 'c2', 'completed', total=0)))
        self.assertEqual(0, progress.percent(
            migration(1, 'c2', 'preparing', total=None)))

    def test_bounded(self):
        self.assertEqual(100, progress.percent(
            migration(1, 'c2', 'running', processed=5000)))


class TestDiskProgress(testtools.TestCase):

    def test_disks_count_with_memory(self):
        m = migration(1, 'c2', 'running', total=1000, remaining=0)
        m.update(disk_total_bytes=3000, disk_processed_bytes=1000,
                 disk_remaining_bytes=2000)
        self.assertEqual(50, progress.percent(m))

    def test_disk_phase_leaves_room_for_memory(self):
        # The hypervisor reports no memory total while disks copy.
        disks_done = migration(1, 'c2', 'running', total=0)
        disks_done.update(disk_total_bytes=2000, disk_remaining_bytes=0)
        memory_begins = migration(1, 'c2', 'running', total=1000,
                                  remaining=900)
        memory_begins.update(disk_total_bytes=2000, disk_remaining_bytes=0)
        shares = [progress.percent(m, memory_bytes=1000)
                  for m in (disks_done, memory_begins)]
        self.assertEqual([66, 70], shares)
        # Without the flavor's RAM the disks alone fill the bar.
        self.assertEqual(100, progress.percent(disks_done))

    def test_row_shows_disk_bytes(self):
        m = migration(1, 'c2', 'running', total=1000, remaining=1000)
        m.update(disk_total_bytes=64 << 20, disk_processed_bytes=16 << 20,
                 disk_remaining_bytes=48 << 20)
        self.assertTrue(progress.render([m])[0].endswith(
            'running  disks 16/64 MiB'))

    def test_ended_destination_keeps_its_disk_counters(self):
        out = io.StringIO()
        bars = progress.ProgressBars(out)
        m = migration(8, 'c2', 'running', total=1000, remaining=0)
        m.update(disk_total_bytes=2 << 20, disk_processed_bytes=1 << 20)
        bars.update([m])
        bars.update([{'id': 8, 'dest_compute': 'c2', 'status': 'cancelled'}])
        self.assertIn('cancelled  disks 1/2 MiB', out.getvalue())


class TestProgressBars(testtools.TestCase):

    def test_rows_aligned_and_ordered(self):
        rows = progress.render([migration(9, 'compute10', 'running',
                                          remaining=500),
                                migration(8, 'c2', 'preparing')])
        self.assertEqual(
            ['c2        [..............................]   0%  preparing',
             'compute10 [###############...............]  50%  running'],
            rows)

    def test_log_gets_only_changes(self):
        out = io.StringIO()
        bars = progress.ProgressBars(out)
        state = [migration(8, 'c2', 'running', remaining=500)]
        bars.update(state)
        bars.update(state)
        bars.update([migration(8, 'c2', 'completed')])
        self.assertEqual(2, out.getvalue().count('c2 '))
        self.assertNotIn('\x1b', out.getvalue())

    def test_terminal_redraws_in_place(self):
        out = FakeTerminal()
        bars = progress.ProgressBars(out)
        bars.update([migration(8, 'c2', 'running', remaining=500),
                     migration(9, 'c3', 'running', remaining=900)])
        bars.update([migration(8, 'c2', 'completed'),
                     migration(9, 'c3', 'cancelled', remaining=900)])
        self.assertEqual(1, out.getvalue().count('\x1b[2F'))

    def test_ended_destination_keeps_its_last_counters(self):
        out = io.StringIO()
        bars = progress.ProgressBars(out)
        bars.update([migration(8, 'c2', 'running', remaining=300)])
        bars.update([{'id': 8, 'dest_compute': 'c2', 'status': 'cancelled'}])
        self.assertIn(' 70%  cancelled', out.getvalue())


class TestConvergence(testtools.TestCase):
    """The dirty and transfer rates --wait derives from the counters."""

    MB = 1000 * 1000

    def setUp(self):
        super().setUp()
        self.now = 0.0
        self.watch = progress.ConvergenceWatch(clock=lambda: self.now)

    def sample(self, processed_mb, remaining_mb, status='running'):
        return self.watch.note(migration(
            1, 'c2', status, total=64 * self.MB,
            processed=processed_mb * self.MB,
            remaining=remaining_mb * self.MB))

    def test_a_guest_that_dirties_what_is_sent_does_not_converge(self):
        notes = []
        for second in range(12):
            self.now = float(second)
            # 110 MB/s sent; the remaining count hovers, as passes restart.
            notes.append(self.sample(110 * second, 30 + second % 3))
        self.assertEqual([None] * 10, notes[:10])
        self.assertEqual('not converging: dirty 110 MB/s >= link 110 MB/s',
                         notes[11])

    def test_dirty_rate_above_the_link(self):
        for second in range(11):
            self.now = float(second)
            note = self.sample(100 * second, 10 + 8 * second)
        self.assertEqual('not converging: dirty 108 MB/s >= link 100 MB/s',
                         note)

    def test_a_shrinking_remainder_converges(self):
        for second in range(15):
            self.now = float(second)
            note = self.sample(4 * second, 60 - 4 * second)
        self.assertIsNone(note)

    def test_a_finished_destination_forgets_its_samples(self):
        for second in range(11):
            self.now = float(second)
            self.sample(100 * second, 30)
        self.assertIsNone(self.sample(1100, 0, status='completed'))
        self.now = 11.0
        self.assertIsNone(self.sample(1100, 30))

    def test_the_bars_show_the_note(self):
        out = io.StringIO()
        bars = progress.ProgressBars(out, clock=lambda: self.now)
        for second in range(11):
            self.now = float(second)
            bars.update([migration(1, 'c2', 'running', total=64 * self.MB,
                                   processed=50 * self.MB * second,
                                   remaining=30 * self.MB)])
        self.assertTrue(out.getvalue().rstrip('\n').endswith(
            'running; not converging: dirty 50 MB/s >= link 50 MB/s'))
