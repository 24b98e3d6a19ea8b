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

import json
from unittest import mock

import testtools

from nova_multidest.conductor import records
from nova_multidest import vocabulary


def fake_instance():
    return mock.Mock(uuid='i-1', system_metadata={})


class RecordsTest(testtools.TestCase):

    def test_group_lifecycle(self):
        instance = fake_instance()
        records.start_group(instance, 1, 'conductor-1')
        self.assertTrue(records.group_in_progress(instance))
        records.record_winner(instance, 'm-1', {'v-1': 'a-1', 'v-2': 'a-2'})
        self.assertEqual('m-1', records.winner(instance))
        self.assertEqual({'v-1': 'a-1', 'v-2': 'a-2'},
                         records.winner_attachments(instance))
        records.clear_winner(instance)
        self.assertIsNone(records.winner(instance))
        self.assertEqual({}, records.winner_attachments(instance))
        records.end_group(instance, vocabulary.MigrationStatus.COMPLETED, 'h2')
        self.assertFalse(records.group_in_progress(instance))
        self.assertEqual([vocabulary.SYSMETA_LAST_RESULT],
                         list(instance.system_metadata))
        self.assertEqual({'result': 'completed', 'host': 'h2'}, json.loads(
            instance.system_metadata[vocabulary.SYSMETA_LAST_RESULT]))

    def test_long_reasons_fit_the_column(self):
        instance = fake_instance()
        records.start_group(instance, 1, 'conductor-1')
        reasons = {'host%d' % i: 'x' * 200 for i in range(4)}
        records.end_group(instance, vocabulary.MigrationStatus.FAILED, 'h1',
                          reasons=reasons)
        text = instance.system_metadata[vocabulary.SYSMETA_LAST_RESULT]
        self.assertLessEqual(len(text), 255)
        self.assertEqual('failed', json.loads(text)['result'])

    def test_start_drops_previous_result(self):
        instance = fake_instance()
        instance.system_metadata[vocabulary.SYSMETA_LAST_RESULT] = '{}'
        records.start_group(instance, 2, 'conductor-1')
        self.assertNotIn(vocabulary.SYSMETA_LAST_RESULT,
                         instance.system_metadata)
        self.assertEqual('2',
                         instance.system_metadata[vocabulary.SYSMETA_ROUND])
