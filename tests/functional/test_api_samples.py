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
"""The API reference's samples (doc/api_samples/) are what the API does.

Each request sample is posted as it is; the response must be the
response sample but for the server's uuid, the request id and the
endpoint's address.
"""

import json
import os

from nova_multidest import vocabulary
from tests.functional import test_api

SAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir,
                       'doc', 'api_samples', vocabulary.SERVER_ACTION)


def sample(name):
    with open(os.path.join(SAMPLES, name)) as f:
        return json.load(f)


class ApiSamplesTest(test_api.MultiDestApiTestBase):

    def setUp(self):
        super().setUp()
        self.server = self.boot_server(host='compute1')

    def post(self, body):
        return self.admin_api.api_post(
            '/servers/%s/action' % self.server['id'], body,
            check_response_status=[202]).body

    def test_named_destinations(self):
        body = self.post(sample('migrate-live-multi-req.json'))
        expected = sample('migrate-live-multi-resp.json')
        documented = expected[vocabulary.RESPONSE_KEY]
        got = body[vocabulary.RESPONSE_KEY]
        self.assertEqual(sorted(documented), sorted(got))
        self.assertEqual(self.server['id'], got['server_uuid'])
        for key in ('destinations', 'count', 'block_migration', 'warm_up'):
            self.assertEqual(documented[key], got[key], key)

        def path(link, server_uuid, request_id):
            href = link['href'].replace(server_uuid, '{server}').replace(
                request_id, '{request}')
            return link['rel'], href[href.index('/v2.1/'):]

        self.assertEqual(
            [path(link, documented['server_uuid'], documented['request_id'])
             for link in documented['links']],
            [path(link, got['server_uuid'], got['request_id'])
             for link in got['links']])

    def test_scheduled_destinations(self):
        body = self.post(sample('migrate-live-multi-count-req.json'))
        got = body[vocabulary.RESPONSE_KEY]
        self.assertEqual(2, got['count'])
        self.assertEqual(self.server['id'], got['server_uuid'])
