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

"""Per-destination progress display for ``openstack server migrate``.

Works from the Migration records the compute API lists, so it needs
nothing but their dictionaries. A guest that dirties memory as fast as
the link copies it shows by its counters alone: the bytes sent grow while
the bytes remaining do not shrink, and what was sent but is not off the
remaining count was dirtied again.
"""

import collections
import time

from nova_multidest import vocabulary

BAR_WIDTH = 30
MiB = 1 << 20
# Seconds of counters over which the dirty and transfer rates are taken:
# long enough to span several pre-copy passes, whose starts make the
# remaining count jump.
CONVERGENCE_WINDOW = 10.0
# Not converging when at least this share of what was sent was dirtied
# again.
NOT_CONVERGING_RATIO = 0.9
MB = 1000 * 1000


def _done_and_total(migration, kind):
    """(copied, total) bytes of ``kind`` (memory or disk), 0s if unknown."""
    total = migration.get('%s_total_bytes' % kind) or 0
    if total <= 0:
        return 0, 0
    remaining = migration.get('%s_remaining_bytes' % kind)
    if remaining is not None:
        done = total - remaining
    else:
        done = migration.get('%s_processed_bytes' % kind) or 0
    return max(0, min(total, done)), total


def percent(migration, memory_bytes=0):
    """Share of guest memory and local disks a destination received.

    Disks are copied before memory, and the hypervisor reports memory's
    total only once memory starts: ``memory_bytes`` (the flavor's RAM)
    stands in for it until then, so the bar does not fill with the disks
    alone and fall back when memory begins.
    """
    if migration.get('status') == vocabulary.MigrationStatus.COMPLETED:
        return 100
    memory_done, memory_total = _done_and_total(migration, 'memory')
    disk_done, disk_total = _done_and_total(migration, 'disk')
    if not memory_total and disk_total:
        memory_total = memory_bytes or 0
    total = memory_total + disk_total
    if total <= 0:
        return 0
    return max(0, min(100, int(100 * (memory_done + disk_done) / total)))


def render_row(migration, host_width, note=None, memory_bytes=0):
    share = percent(migration, memory_bytes)
    filled = BAR_WIDTH * share // 100
    row = '%-*s [%s%s] %3d%%  %s%s' % (
        host_width, migration.get('dest_compute') or '?',
        '#' * filled, '.' * (BAR_WIDTH - filled), share,
        migration.get('status'), '; %s' % note if note else '')
    disk_done, disk_total = _done_and_total(migration, 'disk')
    if disk_total:
        if migration.get('status') == vocabulary.MigrationStatus.COMPLETED:
            disk_done = disk_total
        row += '  disks %d/%d MiB' % (disk_done // MiB, disk_total // MiB)
    return row


def render(migrations, notes=None, memory_bytes=0):
    if not migrations:
        return ['waiting for destinations...']
    notes = notes or {}
    width = max(len(m.get('dest_compute') or '?') for m in migrations)
    return [render_row(m, width, notes.get(m['id']), memory_bytes)
            for m in sorted(migrations, key=lambda m: m['id'])]


class ConvergenceWatch:
    """Dirty rate against transfer rate of each running destination.

    Over the last CONVERGENCE_WINDOW seconds, the transfer rate is the
    growth of ``memory_processed_bytes`` and the dirty rate that growth
    plus the growth of ``memory_remaining_bytes`` (the source sent it,
    yet it still has as much to send).
    """

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._samples = collections.defaultdict(collections.deque)

    def note(self, migration):
        """'not converging: ...' for a destination that does not, or None."""
        processed = migration.get('memory_processed_bytes')
        remaining = migration.get('memory_remaining_bytes')
        if (migration.get('status') != vocabulary.MigrationStatus.RUNNING or
                processed is None or remaining is None):
            self._samples.pop(migration['id'], None)
            return None
        now = self.clock()
        samples = self._samples[migration['id']]
        samples.append((now, processed, remaining))
        while len(samples) > 2 and now - samples[1][0] >= CONVERGENCE_WINDOW:
            samples.popleft()
        first_time, first_processed, first_remaining = samples[0]
        elapsed = now - first_time
        sent = processed - first_processed
        if elapsed < CONVERGENCE_WINDOW or sent <= 0:
            return None
        transfer = sent / elapsed
        dirty = max(0.0, (sent + remaining - first_remaining) / elapsed)
        if dirty < NOT_CONVERGING_RATIO * transfer:
            return None
        return 'not converging: dirty %.0f MB/s >= link %.0f MB/s' % (
            dirty / MB, transfer / MB)


class ProgressBars:
    """One bar per destination.

    On a terminal the block is redrawn in place; elsewhere (logs, pipes)
    it is written again only when it changed, so a log stays readable.
    """

    def __init__(self, stream, clock=time.monotonic, memory_bytes=0):
        self.stream = stream
        self.memory_bytes = memory_bytes
        self.interactive = getattr(stream, 'isatty', lambda: False)()
        self._shown = []
        self._counters = {}
        self._convergence = ConvergenceWatch(clock)

    def update(self, migrations):
        notes = {m['id']: self._convergence.note(m) for m in migrations}
        rows = render([self._with_last_counters(m) for m in migrations],
                      notes, self.memory_bytes)
        if rows == self._shown:
            return
        if self.interactive and self._shown:
            # Back to the first row of the block, clearing as we redraw.
            self.stream.write('\x1b[%dF' % len(self._shown))
        for row in rows:
            self.stream.write(('\x1b[2K' if self.interactive else '') +
                              row + '\n')
        self.stream.flush()
        self._shown = rows

    def _with_last_counters(self, migration):
        """Keep showing how far a destination got once it has ended.

        Byte counters are only listed while a migration is in progress.
        """
        counters = {key: value for key, value in migration.items()
                    if key.startswith(('memory_', 'disk_')) and
                    value is not None}
        if counters:
            self._counters[migration['id']] = counters
            return migration
        return dict(self._counters.get(migration['id'], {}), **migration)
