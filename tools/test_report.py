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

"""Short, readable test output for ``tools/run test``.

A tier's ``stestr run --subunit`` stream comes in on stdin. Each test gets
one line; a failing test is then shown whole (traceback, captured logs and
output), because that is what one needs to fix it, and nothing else is:
logs of passing tests stay in their subunit details (``stestr last`` shows
them), and whatever the test processes print outside any test (warnings
at import, thread pools logging at exit) goes to a side file named in the
summary. The tier's counts are appended to a summary file, from which
``python -m tools.test_report table`` prints the final table.

    stestr run --subunit | python -m tools.test_report tier NAME SUMMARY LOG
    python -m tools.test_report record NAME SUMMARY RC SECONDS
    python -m tools.test_report table SUMMARY

``record`` adds a tier that is one command, not a test suite (flake8).
"""

import collections
import sys
import time

import subunit
import testtools

OUTCOMES = {
    'success': 'ok',
    'fail': 'FAIL',
    'skip': 'skip',
    'xfail': 'xfail',
    'uxsuccess': 'FAIL',
}
COLUMNS = ('tier', 'tests', 'passed', 'failed', 'skipped', 'seconds')

Counts = collections.namedtuple('Counts', COLUMNS)


class _StrayOutput(testtools.StreamResult):
    """Bytes outside any test: non-subunit output of the test processes."""

    def __init__(self, sink):
        super().__init__()
        self.sink = sink
        self.lines = 0

    def status(self, test_id=None, test_status=None, file_name=None,
               file_bytes=None, **kwargs):
        if test_id is None and file_bytes:
            data = bytes(file_bytes)
            self.sink.write(data)
            self.lines += data.count(b'\n')


def _seconds(test):
    start, stop = test['timestamps']
    if start is None or stop is None:
        return 0.0
    return (stop - start).total_seconds()


def _details_text(test):
    parts = []
    for name, content in test['details'].items():
        text = ''.join(content.iter_text()).rstrip()
        if text:
            parts.append('--- %s ---\n%s' % (name, text))
    return '\n'.join(parts)


def report_tier(tier, stream, out, stray_sink):
    """Print one line per test of ``stream``, failures whole; the counts."""
    tests = []

    def on_test(test):
        if test['status'] == 'exists':
            return
        outcome = OUTCOMES.get(test['status'], test['status'])
        tests.append((test, outcome))
        out.write('%-5s %7.2fs %s\n' % (outcome, _seconds(test), test['id']))
        out.flush()

    stray = _StrayOutput(stray_sink)
    result = testtools.CopyStreamResult(
        [testtools.StreamToDict(on_test), stray])
    started = time.monotonic()
    result.startTestRun()
    subunit.ByteStreamToStreamResult(
        stream, non_subunit_name='stdout').run(result)
    result.stopTestRun()
    failures = [t for t, outcome in tests if outcome == 'FAIL']
    for test in failures:
        out.write('\n%s\nFAILED %s\n%s\n%s\n' % (
            '=' * 70, test['id'], '-' * 70, _details_text(test)))
    counts = Counts(
        tier, len(tests),
        sum(1 for _, outcome in tests if outcome in ('ok', 'xfail')),
        len(failures),
        sum(1 for _, outcome in tests if outcome == 'skip'),
        round(time.monotonic() - started))
    out.write('%s: %d tests, %d passed, %d failed, %d skipped\n' % (
        tier, counts.tests, counts.passed, counts.failed, counts.skipped))
    return counts, stray.lines


def format_table(rows):
    """The final table: one row per tier and a total."""
    rows = list(rows)
    total = Counts('total', *[sum(int(getattr(r, c)) for r in rows)
                              for c in COLUMNS[1:]])
    cells = [COLUMNS] + [tuple(str(v) for v in r) for r in rows + [total]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    rule = '  '.join('-' * w for w in widths)
    lines = [rule]
    for n, row in enumerate(cells):
        lines.append('  '.join(
            v.ljust(w) if i == 0 else v.rjust(w)
            for i, (v, w) in enumerate(zip(row, widths))))
        if n == 0 or n == len(cells) - 2:
            lines.append(rule)
    lines.append(rule)
    return '\n'.join(lines) + '\n'


def read_summary(path):
    with open(path) as summary:
        return [Counts(*line.rstrip('\n').split('\t'))
                for line in summary if line.strip()]


def write_summary(path, counts):
    with open(path, 'a') as summary:
        summary.write('\t'.join(str(v) for v in counts) + '\n')


def main(argv):
    if argv[:1] == ['tier'] and len(argv) == 4:
        tier, summary_path, log_path = argv[1:]
        with open(log_path, 'wb') as stray_sink:
            counts, stray = report_tier(tier, sys.stdin.buffer, sys.stdout,
                                        stray_sink)
        if stray:
            sys.stdout.write('(%d lines printed outside tests: %s)\n' % (
                stray, log_path))
        write_summary(summary_path, counts)
        return 1 if counts.failed or not counts.tests else 0
    if argv[:1] == ['record'] and len(argv) == 5:
        tier, summary_path, rc, seconds = argv[1:]
        failed = int(rc != '0')
        write_summary(summary_path, Counts(tier, 1, 1 - failed, failed, 0,
                                           int(seconds)))
        return 0
    if argv[:1] == ['table'] and len(argv) == 2:
        sys.stdout.write(format_table(read_summary(argv[1])))
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
