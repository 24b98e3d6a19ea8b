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

from unittest import mock

import fixtures

from nova_multidest.conductor import rpcapi
from tests import base


class ConductorAPITest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.get_client = self.useFixture(fixtures.MockPatch(
            'nova.rpc.get_client')).mock

    def test_client_is_capped_on_our_topic(self):
        self.flags(conductor_topic='md-topic')
        rpcapi.ConductorAPI()
        target = self.get_client.call_args.args[0]
        self.assertEqual('md-topic', target.topic)
        self.assertEqual('1.0', target.version)
        self.assertEqual('1.0',
                         self.get_client.call_args.kwargs['version_cap'])

    def test_live_migrate_multi_casts(self):
        api = rpcapi.ConductorAPI()
        context, instance = mock.Mock(), mock.Mock()
        api.live_migrate_multi(context, instance, destinations=['h1', 'h2'],
                               block_migration=False, warm_up=True)
        client = self.get_client.return_value
        client.prepare.assert_called_once_with(version='1.0')
        client.prepare.return_value.cast.assert_called_once_with(
            context, 'live_migrate_multi', instance=instance,
            destinations=['h1', 'h2'], count=None, block_migration=False,
            warm_up=True)
