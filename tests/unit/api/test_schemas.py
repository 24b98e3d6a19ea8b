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

import testtools

from nova_multidest.api import schemas
from nova_multidest import exceptions
from nova_multidest import vocabulary

MAX = 4


def body(**args):
    return {vocabulary.SERVER_ACTION: args}


class TestValidate(testtools.TestCase):

    def assert_rejected(self, request, *fragments):
        error = self.assertRaises(exceptions.InvalidMigrationRequest,
                                  schemas.validate, request, MAX)
        self.assertEqual(400, error.code)
        for fragment in fragments:
            self.assertIn(fragment, error.message)
        return error

    def test_defaults(self):
        self.assertEqual(
            {'destinations': None, 'count': None, 'block_migration': 'auto',
             'warm_up': False},
            schemas.validate(body(), MAX))

    def test_destination_list(self):
        args = schemas.validate(
            body(destinations=['c2', 'c3.example.org'], block_migration=True,
                 warm_up=True), MAX)
        self.assertEqual(['c2', 'c3.example.org'], args['destinations'])
        self.assertIsNone(args['count'])
        self.assertIs(True, args['block_migration'])
        self.assertIs(True, args['warm_up'])

    def test_count(self):
        args = schemas.validate(body(count=MAX, block_migration=False), MAX)
        self.assertEqual(MAX, args['count'])
        self.assertIs(False, args['block_migration'])

    def test_destinations_and_count_together(self):
        self.assert_rejected(body(destinations=['c2'], count=2),
                             "either 'destinations' or 'count'")

    def test_unknown_field(self):
        self.assert_rejected(body(host='c2'), '"host" was unexpected',
                             'Remove the unexpected field')

    def test_unknown_top_level_field(self):
        request = body(count=2)
        request['os-migrateLive'] = {'host': None}
        self.assert_rejected(request, '"os-migrateLive" was unexpected')

    def test_duplicate_destination(self):
        self.assert_rejected(body(destinations=['c2', 'c2']),
                             "field 'os-migrateLive-multi/destinations'",
                             'Name each destination host once')

    def test_too_many_destinations(self):
        self.assert_rejected(
            body(destinations=['c%d' % i for i in range(MAX + 1)]),
            'Name at most 4 destination hosts')

    def test_empty_destination_list(self):
        self.assert_rejected(body(destinations=[]), 'destinations')

    def test_bad_host_name(self):
        self.assert_rejected(body(destinations=['c2', 'bad host']),
                             "destinations/1", '"bad host" is not a host name',
                             'letters, digits')

    def test_count_out_of_range(self):
        self.assert_rejected(body(count=0), "count", '0 is out of range',
                             'at least 1')
        self.assert_rejected(body(count=MAX + 1), 'at most 4 destinations')

    def test_count_must_be_integer(self):
        self.assert_rejected(body(count='2'), "count", "not an integer")

    def test_count_is_a_json_integer(self):
        for value in (2.0, 1.0, True, None, [2]):
            self.assert_rejected(body(count=value), "count",
                                 'is not an integer')
        self.assert_rejected(body(count=2.0), 'without quotes or decimal')

    def test_booleans_are_booleans(self):
        for value in ('true', 1, 0, None):
            self.assert_rejected(body(warm_up=value), 'warm_up',
                                 'is not true or false')
        for value in (1, 'True', None, []):
            self.assert_rejected(body(block_migration=value),
                                 'block_migration', 'true, false or "auto"')

    def test_long_values_are_not_echoed(self):
        error = self.assert_rejected(body(destinations=['h' * 10000]),
                                     '10000 characters is too long',
                                     'at most 255')
        self.assertLess(len(error.message), 300)
        error = self.assert_rejected(body(**{'x' * 5000: 1}),
                                     'was unexpected')
        self.assertLess(len(error.message), 300)

    def test_same_host_in_another_letter_case(self):
        self.assert_rejected(body(destinations=['c2', 'C2']),
                             '"c2" and "C2" are the same host')

    def test_host_name_types(self):
        self.assert_rejected(body(destinations=[2]), 'destinations/0',
                             'is not a string')
        self.assert_rejected(body(destinations='c2'), 'is not a list')
        self.assert_rejected(body(destinations=['']), 'cannot be empty')

    def test_block_migration_values(self):
        self.assert_rejected(body(block_migration='yes'),
                             'block_migration', 'true, false or "auto"')

    def test_warm_up_must_be_boolean(self):
        self.assert_rejected(body(warm_up='true'), 'warm_up')

    def test_arguments_must_be_an_object(self):
        self.assert_rejected({vocabulary.SERVER_ACTION: ['c2']},
                             'is not an object')

    def test_limit_follows_configuration(self):
        self.assertEqual(
            8, schemas.validate(body(count=8), 8)['count'])


class TestHostNameRule(testtools.TestCase):

    def test_the_clients_rule_is_novas(self):
        """osc, which has no Nova, checks host names as nova-api does."""
        from nova.api.validation import parameter_types
        self.assertEqual(parameter_types.fqdn['pattern'],
                         vocabulary.HOST_NAME_PATTERN)
        self.assertEqual(parameter_types.fqdn['maxLength'],
                         vocabulary.HOST_NAME_MAX_LENGTH)
