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

"""Where a benchmark leaves its numbers: a Markdown table and a chart.

Every run rewrites ``benchmarks/results/NAME.md`` and ``NAME.png``, so
the committed files are the latest measurement and README can show them.
The machine's load goes with the numbers: on a shared machine a time
without the load it was taken under says little.
"""

import datetime
import os
import platform
import sys
import threading
import time

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           'results')


def load_average():
    return '%.2f %.2f %.2f' % os.getloadavg()


def busy_cpu_seconds():
    """CPU seconds every core of this machine has spent busy since boot.

    The difference over a measured interval, divided by its wall time, is
    how many cores were busy: at the machine's core count, a case is
    bound by CPU, whatever its network could carry.
    """
    with open('/proc/stat') as f:
        fields = [int(value) for value in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is in user)
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf('SC_CLK_TCK')


def busy_at(samples, when):
    """Busy CPU seconds at wall time ``when``, between two samples.

    ``samples`` are (wall time, busy CPU seconds) in time order; the
    figure is interpolated linearly, as the counter only moves in ticks.
    """
    if not samples or not samples[0][0] <= when <= samples[-1][0]:
        raise ValueError('%.3f is outside the sampled interval %s: sample '
                         'around the whole measured interval' % (
                             when, '%.3f to %.3f' % (samples[0][0],
                                                     samples[-1][0])
                             if samples else '(none)'))
    for (t0, b0), (t1, b1) in zip(samples, samples[1:]):
        if t0 <= when <= t1:
            if t1 == t0:
                return b1
            return b0 + (b1 - b0) * (when - t0) / (t1 - t0)
    return samples[0][1]


def cores_busy(samples, start, end):
    """How many cores were busy, on average, from ``start`` to ``end``."""
    if end <= start:
        raise ValueError('an interval must end after it starts: %.3f to '
                         '%.3f' % (start, end))
    return (busy_at(samples, end) - busy_at(samples, start)) / (end - start)


class BusyCores(object):
    """The cores this machine keeps busy over a measured interval.

    While the context is open a thread samples ``busy_cpu_seconds()``;
    ``cores(start, end)`` then covers exactly the interval a table
    reports (its ends may be QEMU's event timestamps, wall clock like
    the samples), not the boots and teardowns around it. At the
    machine's core count a case is bound by CPU, whatever its network
    could carry. The thread wakes every ``period`` seconds only to read
    one line of /proc/stat.
    """

    def __init__(self, period=0.02, read=busy_cpu_seconds, clock=time.time):
        self.period = period
        self._read = read
        self._clock = clock
        self._stop = threading.Event()
        self._thread = None
        self.samples = []

    def _sample(self):
        self.samples.append((self._clock(), self._read()))

    def _run(self):
        while not self._stop.wait(self.period):
            self._sample()

    def __enter__(self):
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self._sample()

    def cores(self, start, end):
        return cores_busy(list(self.samples), start, end)


class Report(object):
    """Tables and bar charts of one benchmark run."""

    def __init__(self, name, title, argv=None, benchmark=None):
        self.name = name
        self.title = title
        self.command = 'tools/run bench %s %s' % (
            benchmark or name,
            ' '.join(sys.argv[1:] if argv is None else argv))
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.load_before = load_average()
        self._notes = []
        self._sections = []
        self._charts = []

    def note(self, text):
        """A paragraph under the title: what was measured, and how."""
        self._notes.append(text)

    def table(self, caption, headers, rows, notes=()):
        """Keep a table; ``rows`` are lists of already formatted cells."""
        self._sections.append((caption, headers, rows, list(notes)))

    def chart(self, caption, labels, values, unit, reference=None,
              reference_label=None):
        """A bar per label; ``reference`` draws a line (direct, a target)."""
        self._charts.append((caption, labels, values, unit, reference,
                             reference_label))

    def markdown(self):
        lines = ['# %s' % self.title, '',
                 '`%s`, %s, %s, %d cores; load average (1, 5, 15 min) '
                 'before: %s, after: %s.' % (
                     self.command.strip(),
                     self.started.strftime('%Y-%m-%d %H:%M UTC'),
                     platform.python_implementation() + ' ' +
                     platform.python_version(), os.cpu_count(),
                     self.load_before, load_average()), '']
        for note in self._notes:
            lines += [note, '']
        for caption, headers, rows, notes in self._sections:
            lines += ['## %s' % caption, '',
                      '| %s |' % ' | '.join(headers),
                      '|%s|' % '|'.join('---' for _ in headers)]
            lines += ['| %s |' % ' | '.join(str(c) for c in row)
                      for row in rows]
            lines.append('')
            for note in notes:
                lines += [note, '']
        if self._charts:
            lines += ['![%s](%s.png)' % (self.title, self.name), '']
        return '\n'.join(lines)

    def write(self, directory=RESULTS_DIR):
        """Write NAME.md and NAME.png; return their paths."""
        os.makedirs(directory, exist_ok=True)
        md_path = os.path.join(directory, '%s.md' % self.name)
        with open(md_path, 'w') as out:
            out.write(self.markdown())
        paths = [md_path]
        if self._charts:
            png_path = os.path.join(directory, '%s.png' % self.name)
            self._draw(png_path)
            paths.append(png_path)
        return paths

    def _draw(self, path):
        import matplotlib
        matplotlib.use('Agg')
        from matplotlib import pyplot

        count = len(self._charts)
        figure, axes = pyplot.subplots(
            count, 1, figsize=(9, 3.2 * count), squeeze=False)
        for axis, chart in zip(axes[:, 0], self._charts):
            caption, labels, values, unit, reference, reference_label = chart
            positions = range(len(labels))
            bars = axis.bar(positions, [v if v == v else 0 for v in values],
                            color='#4c72b0')
            axis.bar_label(bars, labels=['%.3g' % v if v == v else 'n/a'
                                         for v in values], fontsize=8)
            axis.set_xticks(list(positions))
            axis.set_xticklabels(labels, fontsize=8)
            axis.set_ylabel(unit)
            axis.set_title(caption, fontsize=10)
            if reference is not None:
                axis.axhline(reference, color='#c44e52', linestyle='--',
                             label=reference_label)
                if reference_label:
                    axis.legend(fontsize=8)
        figure.suptitle('%s (load %s)' % (self.title, self.load_before),
                        fontsize=11)
        figure.tight_layout()
        figure.savefig(path, dpi=90)
        pyplot.close(figure)
