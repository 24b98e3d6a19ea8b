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
import oslo_messaging as messaging

from nova_multidest.conductor import rpcapi
from nova_multidest import exceptions
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
        client.prepare.assert_called_once_with(
            version='1.0', transport_options=mock.ANY)
        self.assertTrue(client.prepare.call_args.kwargs[
            'transport_options'].at_least_once)
        client.prepare.return_value.cast.assert_called_once_with(
            context, 'live_migrate_multi', instance=instance,
            destinations=['h1', 'h2'], count=None, block_migration=False,
            warm_up=True)

    def test_cast_returned_by_the_broker_says_no_conductor_listens(self):
        """A broker without a queue for the topic returns the cast."""
        self.flags(conductor_topic='md-topic')
        api = rpcapi.ConductorAPI()
        cast = self.get_client.return_value.prepare.return_value.cast
        cast.side_effect = messaging.MessageUndeliverable(
            Exception('NO_ROUTE'), 'nova', 'md-topic', {})
        error = self.assertRaises(
            exceptions.NoConductorListening, api.live_migrate_multi,
            mock.Mock(), mock.Mock(), destinations=['h1', 'h2'])
        self.assertIn('md-topic', error.message)
        self.assertIn('Nothing was changed', error.message)
        self.assertEqual(503, error.code)
