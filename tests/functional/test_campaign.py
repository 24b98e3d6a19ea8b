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

"""A short fixed-seed run of the campaign (``campaign.py``) in this tier.

The full campaign is a benchmark (``tools/run campaign``); this one keeps
a few runs of every kind (restarts of the conductor and of the source,
destination faults, abort, warm-up) in every functional run.
"""

from tests.functional import campaign

SEED = 9
RUNS = 50


class ShortCampaignTest(campaign.CampaignHarness):
    """The issue's 50 runs, as two halves that stestr's workers share."""

    def _run_and_check(self, indices):
        records = []
        self.scenarios = [campaign.draw(SEED, index) for index in indices]
        self.sink = records.append
        self.run_batch()
        # The runs first: a hang's record says where its group stood.
        bad = {r['index']: r['violations'] for r in records
               if r['violations'] or r.get('hang')}
        self.assertEqual({}, bad, campaign.summary(records))
        self.assertIsNone(self.dirty, self.dirty)
        self.assertEqual(len(indices), len(records))
        return records

    def test_first_half_has_no_violation_and_no_hang(self):
        records = self._run_and_check(range(RUNS // 2))
        self.assertTrue(any(r.get('restart_done') for r in records))

    def test_second_half_has_no_violation_and_no_hang(self):
        records = self._run_and_check(range(RUNS // 2, RUNS))
        self.assertTrue(any(r.get('restart_done') for r in records))
