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
nothing but their dictionaries.
"""

from nova_multidest import vocabulary

BAR_WIDTH = 30
MiB = 1 << 20


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


def percent(migration):
    """Share of guest memory and local disks a destination received."""
    if migration.get('status') == vocabulary.MigrationStatus.COMPLETED:
        return 100
    memory_done, memory_total = _done_and_total(migration, 'memory')
    disk_done, disk_total = _done_and_total(migration, 'disk')
    total = memory_total + disk_total
    if total <= 0:
        return 0
    return max(0, min(100, int(100 * (memory_done + disk_done) / total)))


def render_row(migration, host_width):
    share = percent(migration)
    filled = BAR_WIDTH * share // 100
    row = '%-*s [%s%s] %3d%%  %s' % (
        host_width, migration.get('dest_compute') or '?',
        '#' * filled, '.' * (BAR_WIDTH - filled), share,
        migration.get('status'))
    disk_done, disk_total = _done_and_total(migration, 'disk')
    if disk_total:
        if migration.get('status') == vocabulary.MigrationStatus.COMPLETED:
            disk_done = disk_total
        row += '  disks %d/%d MiB' % (disk_done // MiB, disk_total // MiB)
    return row


def render(migrations):
    if not migrations:
        return ['waiting for destinations...']
    width = max(len(m.get('dest_compute') or '?') for m in migrations)
    return [render_row(m, width)
            for m in sorted(migrations, key=lambda m: m['id'])]


class ProgressBars:
    """One bar per destination.

    On a terminal the block is redrawn in place; elsewhere (logs, pipes)
    it is written again only when it changed, so a log stays readable.
    """

    def __init__(self, stream):
        self.stream = stream
        self.interactive = getattr(stream, 'isatty', lambda: False)()
        self._shown = []
        self._counters = {}

    def update(self, migrations):
        rows = render([self._with_last_counters(m) for m in migrations])
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
