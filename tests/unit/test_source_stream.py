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

"""When the source stream holds pre-copy and when it lets go."""

from unittest import mock

import testtools

from nova_multidest.dataplane import hypervisor
from nova_multidest.dataplane import relay
from nova_multidest.dataplane import source_stream
from nova_multidest import vocabulary


class StreamTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.source = mock.Mock()
        self.source.name = 'guest'
        self.stats = hypervisor.MigrationStats(
            status=vocabulary.QemuStatus.ACTIVE, transferred=100, total=1000,
            iterations=1)
        self.source.stats.side_effect = lambda: self.stats
        self.relay = mock.Mock(bytes_from_source=100, source_uri='unix:x')
        self.relay.progress.return_value = {
            'dest': relay.DestinationProgress('streaming', 100, None)}
        self.progress = []
        self.stream = source_stream.SourceStream(
            self.source, self.relay, warm_up=True, downtime_limit_ms=300,
            on_progress=lambda *args: self.progress.append(args))
        # The monitor thread is driven by hand.
        self.stream.start(lambda func: None)

    def downtime_limits(self):
        return [c.kwargs['downtime_limit_ms']
                for c in self.source.set_parameters.call_args_list]

    def first_pass_done(self):
        self.stats = hypervisor.MigrationStats(
            status=vocabulary.QemuStatus.ACTIVE, transferred=100, total=1000,
            iterations=2)

    def test_warm_up_starts_holding_and_migrates_into_the_relay(self):
        self.assertEqual([source_stream.HOLD_DOWNTIME_MS],
                         self.downtime_limits())
        self.source.migrate.assert_called_once_with('unix:x')
        self.assertTrue(self.stream.holding)

    def test_switch_over_waits_for_the_exit_condition(self):
        self.stream.switch_over()
        self.assertTrue(self.stream.holding)
        self.stream._poll()
        self.stream._maybe_release()
        self.assertTrue(self.stream.holding)
        self.assertFalse(self.stream.status()['warm_up_ready'])

        self.first_pass_done()
        self.stream._poll()
        self.stream._maybe_release()
        self.assertFalse(self.stream.holding)
        self.assertEqual([source_stream.HOLD_DOWNTIME_MS, 300],
                         self.downtime_limits())
        self.assertTrue(self.stream.status()['warm_up_ready'])

    def test_ready_warm_up_keeps_holding_without_a_request(self):
        self.first_pass_done()
        self.stream._poll()
        self.stream._maybe_release()
        self.assertTrue(self.stream.holding)
        self.assertTrue(self.stream.status()['warm_up_ready'])

    def test_a_second_request_forces_the_switch_over(self):
        self.stream.switch_over()
        self.stream.switch_over()
        self.assertFalse(self.stream.holding)
        self.assertEqual(source_stream.FORCE_DOWNTIME_MS,
                         self.downtime_limits()[-1])

    def test_progress_reaches_the_callback_with_each_destination(self):
        self.stream._poll()
        stats, progress = self.progress[-1]
        self.assertIs(self.stats, stats)
        self.assertEqual(100, progress['dest'].bytes_sent)

    def test_close_cancels_a_running_migration_and_the_relay(self):
        self.stream.close()
        self.source.cancel.assert_called_once_with()
        self.relay.close.assert_called_once_with()

    def test_failed_migration_start_closes_the_relay(self):
        source = mock.Mock()
        source.migrate.side_effect = RuntimeError('refused')
        fanout = mock.Mock()
        stream = source_stream.SourceStream(source, fanout)
        self.assertRaises(RuntimeError, stream.start, lambda func: None)
        fanout.close.assert_called_once_with()
