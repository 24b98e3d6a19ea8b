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

"""Where each compute RPC goes, and what it carries."""

from unittest import mock

import testtools

from nova_multidest.compute import rpcapi
from nova_multidest import exceptions
from nova_multidest import vocabulary


class ComputeAPITest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        patcher = mock.patch('nova.rpc.get_client')
        self.get_client = patcher.start()
        self.addCleanup(patcher.stop)
        self.client = self.get_client.return_value
        self.cctxt = self.client.prepare.return_value
        self.api = rpcapi.ComputeAPI()
        self.instance = mock.Mock(host='src', uuid='i-1')
        self.migration = mock.Mock(source_compute='src', dest_compute='dst',
                                   uuid='m-1')

    def test_client_is_capped_and_on_our_topic(self):
        target = self.get_client.call_args.args[0]
        self.assertEqual('nova-multidest-compute', target.topic)
        self.assertEqual('1.3', target.version)
        self.assertEqual(rpcapi.RPC_API_VERSION,
                         self.get_client.call_args.kwargs['version_cap'])

    def test_ping_asks_for_1_1_of_one_host(self):
        self.api.ping('ctxt', 'host2', 7)
        self.client.prepare.assert_called_once_with(
            server='host2', version='1.1', timeout=7)
        self.cctxt.call.assert_called_once_with('ctxt', 'ping')

    def test_prepare_destination_calls_the_destination_with_hex_secret(self):
        self.api.prepare_destination('ctxt', self.instance, self.migration,
                                     b'\x01\x02', False, 'md')
        self.assertEqual('dst', self.client.prepare.call_args.kwargs['server'])
        self.cctxt.call.assert_called_once_with(
            'ctxt', 'prepare_destination', instance=self.instance,
            migration=self.migration, secret='0102', block_migration=False,
            migrate_data='md')

    def test_start_stream_is_a_call_to_the_source_that_reports_errors(self):
        self.client.can_send_version.return_value = True
        self.api.start_stream('ctxt', self.instance, [], b'\xff', 'star',
                              True)
        kwargs = self.client.prepare.call_args.kwargs
        self.assertEqual(('src', '1.2'), (kwargs['server'],
                                          kwargs['version']))
        self.cctxt.call.assert_called_once_with(
            'ctxt', 'start_stream', instance=self.instance, destinations=[],
            secret='ff', topology='star', warm_up=True, report_errors=True)
        self.client.can_send_version.assert_called_once_with('1.2')

    def test_start_stream_is_a_cast_to_an_older_source(self):
        self.client.can_send_version.return_value = False
        self.api.start_stream('ctxt', self.instance, [], b'\xff', 'star',
                              True)
        self.assertEqual('1.0', self.client.prepare.call_args.kwargs[
            'version'])
        self.cctxt.cast.assert_called_once_with(
            'ctxt', 'start_stream', instance=self.instance, destinations=[],
            secret='ff', topology='star', warm_up=True)

    def test_wait_destination_rpc_outlives_its_timeout(self):
        self.api.wait_destination('ctxt', self.instance, self.migration, 60)
        kwargs = self.client.prepare.call_args.kwargs
        self.assertEqual('dst', kwargs['server'])
        self.assertGreater(kwargs['timeout'], 60)

    def test_cleanup_source_goes_to_the_migration_source(self):
        self.instance.host = 'winner'
        self.api.cleanup_source('ctxt', self.instance, self.migration)
        self.assertEqual('src', self.client.prepare.call_args.kwargs['server'])

    def test_secret_round_trip(self):
        secret = bytes(range(32))
        self.assertEqual(secret, rpcapi.decode_secret(
            rpcapi.encode_secret(secret)))


class DiskVersionTest(ComputeAPITest):
    """Block migration needs 1.3 of every host it reaches."""

    def test_block_migration_calls_are_sent_as_1_1(self):
        self.client.can_send_version.return_value = True
        self.api.prepare_destination('ctxt', self.instance, self.migration,
                                     b'\x01', True, 'md')
        self.assertEqual('1.3', self.client.prepare.call_args.kwargs[
            'version'])
        self.api.start_stream('ctxt', self.instance, [], b'\x01', 'star',
                              False, block_migration=True)
        self.assertTrue(self.cctxt.call.call_args.kwargs['block_migration'])
        self.assertEqual('1.3', self.client.prepare.call_args.kwargs[
            'version'])

    def test_memory_only_calls_stay_at_1_0(self):
        self.client.can_send_version.return_value = False
        self.api.start_stream('ctxt', self.instance, [], b'\x01', 'star',
                              False)
        self.assertEqual('1.0', self.client.prepare.call_args.kwargs[
            'version'])
        self.assertNotIn('block_migration',
                         self.cctxt.cast.call_args.kwargs)

    def test_block_migration_refused_when_capped_below_1_1(self):
        self.client.can_send_version.return_value = False
        api = rpcapi.ComputeAPI(version_cap='1.2')
        api.client = self.client
        error = self.assertRaises(
            exceptions.InvalidSettings, api.prepare_destination, 'ctxt',
            self.instance, self.migration, b'\x01', True, 'md')
        self.assertIn('1.3', str(error))
        self.assertIn('capped at 1.2', str(error))
        self.cctxt.call.assert_not_called()

    def test_versions_come_from_compute_node_stats(self):
        key = vocabulary.COMPUTE_STATS_KEY
        nodes = {'new': [mock.Mock(stats={key: '1.3'})],
                 'old': [mock.Mock(stats={'uptime': 3})]}
        with mock.patch('nova.objects.ComputeNodeList.get_all_by_host',
                        side_effect=lambda ctxt, host: nodes[host]):
            self.assertEqual('1.3', rpcapi.host_version('ctxt', 'new'))
            self.assertEqual('1.0', rpcapi.host_version('ctxt', 'old'))
            self.assertEqual('1.3', rpcapi.oldest_version('ctxt', ['new']))
            self.assertEqual('1.0',
                             rpcapi.oldest_version('ctxt', ['new', 'old']))
            api = rpcapi.ComputeAPI.for_hosts('ctxt', ['new', 'old'])
        self.assertEqual('1.0', api.version_cap)
