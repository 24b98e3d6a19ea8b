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

"""tools/test_report.py: a line per test, failures whole, the table."""

import datetime
import io

import fixtures
import subunit

from tests import base
from tools import test_report

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def _stream(*tests, stray=b''):
    """A subunit v2 stream of (id, status, details) with stray bytes."""
    out = io.BytesIO()
    out.write(stray)
    writer = subunit.StreamResultToBytes(out)
    for n, (test_id, status, details) in enumerate(tests):
        writer.status(test_id=test_id, test_status='inprogress',
                      timestamp=T0)
        for name, text in details.items():
            writer.status(test_id=test_id, file_name=name,
                          file_bytes=text.encode(),
                          mime_type='text/plain; charset=utf8', eof=True)
        writer.status(test_id=test_id, test_status=status,
                      timestamp=T0 + datetime.timedelta(seconds=n + 1))
    out.write(stray)
    out.seek(0)
    return out


class TestReportTier(base.TestCase):

    def _report(self, stream):
        out, stray = io.StringIO(), io.BytesIO()
        counts, stray_lines = test_report.report_tier('unit', stream, out,
                                                      stray)
        return counts, stray_lines, out.getvalue(), stray.getvalue()

    def test_one_line_per_test_and_counts(self):
        counts, _, text, _ = self._report(_stream(
            ('t.a', 'success', {'pythonlogging': 'quiet log'}),
            ('t.b', 'skip', {}),
            ('t.c', 'xfail', {})))
        self.assertEqual(('unit', 3, 2, 0, 1), counts[:5])
        self.assertEqual([
            'ok       1.00s t.a',
            'skip     2.00s t.b',
            'xfail    3.00s t.c',
            'unit: 3 tests, 2 passed, 0 failed, 1 skipped'],
            text.splitlines())
        self.assertNotIn('quiet log', text)

    def test_failure_shown_whole_with_its_logs(self):
        counts, _, text, _ = self._report(_stream(
            ('t.ok', 'success', {'pythonlogging': 'passing log'}),
            ('t.bad', 'fail', {'traceback': 'AssertionError: 1 != 2',
                               'pythonlogging': 'INFO the reason'})))
        self.assertEqual(1, counts.failed)
        self.assertEqual(1, counts.passed)
        self.assertIn('FAILED t.bad', text)
        self.assertIn('AssertionError: 1 != 2', text)
        self.assertIn('INFO the reason', text)
        self.assertNotIn('passing log', text)

    def test_unexpected_success_is_a_failure(self):
        counts, _, _, _ = self._report(_stream(('t.u', 'uxsuccess', {})))
        self.assertEqual(1, counts.failed)

    def test_output_outside_tests_goes_to_the_side_file(self):
        _, lines, text, stray = self._report(_stream(
            ('t.a', 'success', {}), stray=b'INFO pool shut down\n'))
        self.assertEqual(2, lines)
        self.assertEqual(b'INFO pool shut down\n' * 2, stray)
        self.assertNotIn('pool shut down', text)


class TestMain(base.TestCase):

    def setUp(self):
        super().setUp()
        self.summary = self.useFixture(
            fixtures.TempDir()).join('summary')

    def test_exit_code_says_whether_the_tier_failed(self):
        stray = self.useFixture(fixtures.TempDir()).join('log')
        for status, expected in (('success', 0), ('fail', 1)):
            stdin = io.TextIOWrapper(_stream(('t.a', status, {})))
            self.useFixture(fixtures.MonkeyPatch(
                'sys.stdin', stdin))
            self.useFixture(fixtures.MonkeyPatch(
                'sys.stdout', io.StringIO()))
            self.assertEqual(expected, test_report.main(
                ['tier', 'unit', self.summary, stray]))

    def test_no_test_at_all_fails(self):
        self.useFixture(fixtures.MonkeyPatch(
            'sys.stdin', io.TextIOWrapper(io.BytesIO())))
        self.useFixture(fixtures.MonkeyPatch(
            'sys.stdout', io.StringIO()))
        stray = self.useFixture(fixtures.TempDir()).join('log')
        self.assertEqual(1, test_report.main(
            ['tier', 'unit', self.summary, stray]))

    def test_table_has_every_tier_and_a_total(self):
        test_report.write_summary(
            self.summary, test_report.Counts('unit', 10, 9, 1, 0, 12))
        test_report.main(['record', 'pep8', self.summary, '0', '3'])
        rows = [line.split() for line in test_report.format_table(
            test_report.read_summary(self.summary)).splitlines()
            if not line.startswith('-')]
        self.assertEqual([
            ['tier', 'tests', 'passed', 'failed', 'skipped', 'seconds'],
            ['unit', '10', '9', '1', '0', '12'],
            ['pep8', '1', '1', '0', '0', '3'],
            ['total', '11', '10', '1', '0', '15']], rows)
