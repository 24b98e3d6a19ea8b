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

"""The source-side engine: hold, probe, release, force, events."""

import threading
from unittest import mock

import testtools

from nova_multidest.dataplane import hypervisor
from nova_multidest.dataplane import relay
from nova_multidest.dataplane import source_stream
from nova_multidest import exceptions
from nova_multidest import vocabulary

MiB = 1 << 20


class FakeClock(object):

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


class StreamTestBase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.clock = FakeClock()
        self._fake_clock()
        self.source = mock.Mock()
        self.source.name = 'guest'
        self.events = []
        self.source.subscribe.side_effect = self.events.append
        self.set_stats(iterations=1)
        self.source.stats.side_effect = lambda: self.stats
        self.relay = mock.Mock(bytes_from_source=100, source_uri='unix:x')
        self.relay.progress.return_value = {
            'dest': relay.DestinationProgress('streaming', 100, None)}
        self.progress = []
        self.ready = []

    def _fake_clock(self):
        patcher = mock.patch.object(source_stream, 'time', self.clock)
        patcher.start()
        self.addCleanup(patcher.stop)

    def set_stats(self, status=vocabulary.QemuStatus.ACTIVE, iterations=1,
                  bandwidth=0.0):
        self.stats = hypervisor.MigrationStats(
            status=status, transferred=100, total=1000,
            iterations=iterations, bandwidth=bandwidth)

    def emit(self, kind, status=None, iteration=None):
        """What the source's hypervisor tells its subscribers."""
        for callback in self.events:
            callback(hypervisor.GuestEvent(guest='guest', kind=kind,
                                           timestamp=0, status=status,
                                           iteration=iteration))

    def second_pass(self):
        """QEMU begins its second pass over memory, and says so."""
        self.set_stats(iterations=2)
        self.emit(hypervisor.EVENT_PASS, iteration=2)

    def make(self, spawn=lambda func: None, **settings):
        settings.setdefault('downtime_limit_ms', 300)
        stream = source_stream.SourceStream(
            self.source, self.relay, source_stream.StreamSettings(**settings),
            on_progress=lambda *args: self.progress.append(args),
            on_ready=self.ready.append)
        stream.start(spawn)
        self.addCleanup(stream.close)
        return stream

    def step(self, stream, seconds=0.0):
        """One turn of the engine's loop, ``seconds`` later."""
        self.clock.now += seconds
        stream._sample()
        stream._advance()

    def parameters(self):
        return [c.kwargs for c in self.source.set_parameters.call_args_list]


class WarmUpTest(StreamTestBase):

    def setUp(self):
        super().setUp()
        self.stream = self.make(warm_up=True, switch_over_timeout=10)

    def test_starts_holding_at_the_probe_bandwidth(self):
        self.assertEqual(
            [{'max_bandwidth': source_stream.PROBE_BANDWIDTH,
              'downtime_limit_ms': source_stream.HOLD_DOWNTIME_MS}],
            self.parameters())
        self.source.set_capabilities.assert_called_once_with(
            {'events': True})
        self.source.migrate.assert_called_once_with('unix:x')
        self.assertTrue(self.stream.holding)

    def test_full_bandwidth_once_qemu_measured_its_own(self):
        self.step(self.stream)
        self.assertEqual(1, len(self.parameters()))
        self.set_stats(bandwidth=1e6)
        self.step(self.stream)
        self.step(self.stream)
        self.assertEqual(
            {'max_bandwidth': source_stream.UNLIMITED_BANDWIDTH},
            self.parameters()[1])
        self.assertEqual(2, len(self.parameters()))
        self.assertTrue(self.stream.holding)

    def test_switch_over_waits_for_the_exit_condition(self):
        self.stream.switch_over()
        self.step(self.stream, 1)
        self.assertTrue(self.stream.holding)
        self.assertFalse(self.stream.status()['warm_up_ready'])

        self.set_stats(iterations=2)
        self.step(self.stream, 1)
        self.assertFalse(self.stream.holding)
        self.assertEqual(
            {'max_bandwidth': source_stream.UNLIMITED_BANDWIDTH,
             'downtime_limit_ms': 300}, self.parameters()[-1])
        self.assertTrue(self.stream.status()['warm_up_ready'])

    def test_ready_keeps_holding_without_a_request_and_says_so_once(self):
        self.set_stats(iterations=2)
        self.step(self.stream)
        self.step(self.stream)
        self.assertTrue(self.stream.holding)
        self.assertEqual(1, len(self.ready))
        self.assertTrue(self.ready[0].ready)

    def test_a_gate_holds_the_switch_over_too(self):
        gate = threading.Event()
        self.stream.add_gate(gate.is_set)
        self.set_stats(iterations=2)
        self.stream.switch_over()
        self.step(self.stream)
        self.assertTrue(self.stream.holding)
        gate.set()
        self.step(self.stream)
        self.assertFalse(self.stream.holding)

    def test_a_second_request_forces_the_switch_over(self):
        self.stream.switch_over()
        self.stream.switch_over()
        self.step(self.stream)
        self.assertFalse(self.stream.holding)
        self.assertEqual(source_stream.MAX_DOWNTIME_MS,
                         self.parameters()[-1]['downtime_limit_ms'])

    def test_not_ready_within_the_timeout_is_forced(self):
        self.stream.switch_over()
        self.step(self.stream, 9.5)
        self.assertTrue(self.stream.holding)
        self.step(self.stream, 1)
        self.assertFalse(self.stream.holding)
        self.assertEqual(source_stream.MAX_DOWNTIME_MS,
                         self.parameters()[-1]['downtime_limit_ms'])

    def test_released_but_not_converging_is_forced(self):
        self.set_stats(iterations=2)
        self.stream.switch_over()
        self.step(self.stream, 1)
        self.assertEqual(300, self.parameters()[-1]['downtime_limit_ms'])
        self.step(self.stream, 10)
        self.assertEqual(source_stream.MAX_DOWNTIME_MS,
                         self.parameters()[-1]['downtime_limit_ms'])
        count = len(self.parameters())
        self.step(self.stream, 10)
        self.assertEqual(count, len(self.parameters()))

    def test_the_engine_sleeps_until_the_deadline_at_most(self):
        self.assertEqual(0.5, self.stream._next_wake())
        self.stream.switch_over()
        self.clock.now += 9.8
        self.assertAlmostEqual(0.2, self.stream._next_wake())

    def test_progress_reaches_the_callback_with_each_destination(self):
        self.step(self.stream)
        stats, progress = self.progress[-1]
        self.assertIs(self.stats, stats)
        self.assertEqual(100, progress['dest'].bytes_sent)


class StreamTest(StreamTestBase):

    def test_without_warm_up_the_first_pass_is_held(self):
        stream = self.make(max_bandwidth=64 * MiB)
        self.assertEqual(
            [{'max_bandwidth': 64 * MiB,
              'downtime_limit_ms': source_stream.HOLD_DOWNTIME_MS}],
            self.parameters())
        self.step(stream, 5)
        self.assertEqual(1, len(self.parameters()))
        self.second_pass()
        self.step(stream)
        self.assertEqual({'downtime_limit_ms': 300}, self.parameters()[-1])
        self.step(stream, 5)
        self.assertEqual(2, len(self.parameters()))

    def test_only_the_pass_event_says_the_first_pass_is_done(self):
        stream = self.make()
        # The first pass event comes as the migration starts.
        self.emit(hypervisor.EVENT_PASS, iteration=1)
        self.step(stream, 5)
        self.assertEqual(1, len(self.parameters()))
        self.emit(hypervisor.EVENT_PASS, iteration=2)
        self.step(stream)
        self.assertEqual({'downtime_limit_ms': 300}, self.parameters()[-1])

    def test_the_pass_event_releases_the_limit_without_a_sample(self):
        threads = []
        released = threading.Event()

        def spawn(func):
            threads.append(threading.Thread(target=func, daemon=True))
            threads[-1].start()

        def set_parameters(**parameters):
            if parameters.get('downtime_limit_ms') == 300:
                released.set()
        self.source.set_parameters.side_effect = set_parameters
        stream = self.make(spawn=spawn, sample_interval=3600)
        self.assertFalse(released.is_set())
        self.second_pass()
        # With a sample every hour, only the event can release it.
        self.assertTrue(released.wait(30))
        self.set_stats(status=vocabulary.QemuStatus.COMPLETED)
        self.emit(hypervisor.EVENT_MIGRATION, vocabulary.QemuStatus.COMPLETED)
        self.assertTrue(stream.wait(30))

    def test_a_request_without_warm_up_forces_at_once(self):
        stream = self.make()
        stream.switch_over()
        self.step(stream)
        self.assertEqual(source_stream.MAX_DOWNTIME_MS,
                         self.parameters()[-1]['downtime_limit_ms'])

    def test_events_end_the_stream_without_waiting_for_a_sample(self):
        threads = []

        def spawn(func):
            threads.append(threading.Thread(target=func, daemon=True))
            threads[-1].start()

        stream = self.make(spawn=spawn, sample_interval=3600)
        self.assertFalse(stream.wait(0))
        self.set_stats(status=vocabulary.QemuStatus.COMPLETED)
        self.emit(hypervisor.EVENT_MIGRATION, vocabulary.QemuStatus.COMPLETED)
        self.assertTrue(stream.wait(30))
        self.assertEqual(vocabulary.QemuStatus.COMPLETED,
                         stream.stats.status)

    def test_the_stop_phase_puts_the_leading_destination_first(self):
        stream = self.make()
        self.relay.prioritize_leader.assert_not_called()
        self.emit(hypervisor.EVENT_STOPPED)
        self.relay.prioritize_leader.assert_called_once_with()
        self.assertFalse(stream.wait(0))

    def test_a_relay_that_cannot_prioritize_does_not_stop_the_stream(self):
        self.relay.prioritize_leader.side_effect = RuntimeError('gone')
        stream = self.make()
        self.emit(hypervisor.EVENT_STOPPED)
        self.assertTrue(stream._wake.is_set())

    def test_close_cancels_a_running_migration_and_the_relay(self):
        stream = self.make()
        stream.close()
        self.source.cancel.assert_called_once_with()
        self.relay.close.assert_called_once_with()
        # The guest stays here after an abort; its next migration watches
        # it again.
        self.source.stop_watching.assert_called_once_with()

    def test_failed_migration_start_closes_the_relay(self):
        self.source.migrate.side_effect = RuntimeError('refused')
        stream = source_stream.SourceStream(self.source, self.relay)
        self.assertRaises(RuntimeError, stream.start, lambda func: None)
        self.relay.close.assert_called_once_with()


STEPS = ((0, 50), (150, 95), (300, 140), (450, 185))


class DowntimeStepTest(StreamTestBase):
    """Nova's stepped downtime, raised by the engine's own clock."""

    def test_the_first_step_applies_once_the_first_pass_is_done(self):
        stream = self.make(downtime_steps=STEPS, downtime_limit_ms=185)
        self.assertEqual(source_stream.HOLD_DOWNTIME_MS,
                         self.parameters()[0]['downtime_limit_ms'])
        self.second_pass()
        self.step(stream, 1)
        self.assertEqual({'downtime_limit_ms': 50}, self.parameters()[-1])

    def test_each_step_applies_once_its_time_has_passed(self):
        stream = self.make(downtime_steps=STEPS, downtime_limit_ms=185)
        self.second_pass()
        self.step(stream)
        self.assertEqual(2, len(self.parameters()))
        self.step(stream, 150)
        self.assertEqual(2, len(self.parameters()))
        self.step(stream, 0.5)
        self.assertEqual({'downtime_limit_ms': 95}, self.parameters()[-1])
        self.step(stream, 1)
        self.assertEqual(3, len(self.parameters()))
        self.step(stream, 1000)
        self.assertEqual({'downtime_limit_ms': 185}, self.parameters()[-1])
        self.assertEqual(4, len(self.parameters()))

    def test_a_first_pass_past_a_step_gets_that_step(self):
        stream = self.make(downtime_steps=STEPS, downtime_limit_ms=185)
        self.step(stream, 200)
        self.assertEqual(1, len(self.parameters()))
        self.second_pass()
        self.step(stream)
        self.assertEqual({'downtime_limit_ms': 95}, self.parameters()[-1])

    def test_the_engine_wakes_for_the_next_step(self):
        stream = self.make(downtime_steps=STEPS, downtime_limit_ms=185,
                           sample_interval=60)
        self.clock.now += 149.75
        self.assertAlmostEqual(0.25, stream._next_wake())

    def test_warm_up_holds_then_uses_the_final_limit(self):
        stream = self.make(downtime_steps=STEPS, downtime_limit_ms=185,
                           warm_up=True, switch_over_timeout=1000)
        self.step(stream, 200)
        self.assertEqual(source_stream.HOLD_DOWNTIME_MS,
                         self.parameters()[-1]['downtime_limit_ms'])
        self.set_stats(iterations=2)
        stream.switch_over()
        self.step(stream, 1)
        self.assertEqual(185, self.parameters()[-1]['downtime_limit_ms'])
        self.step(stream, 300)
        self.assertEqual(185, self.parameters()[-1]['downtime_limit_ms'])

    def test_a_forced_switch_over_is_not_stepped_down(self):
        stream = self.make(downtime_steps=STEPS, downtime_limit_ms=185)
        stream.switch_over()
        self.step(stream, 1)
        self.step(stream, 200)
        self.assertEqual(source_stream.MAX_DOWNTIME_MS,
                         self.parameters()[-1]['downtime_limit_ms'])


class CompletionTimeoutTest(StreamTestBase):

    def test_abort_cancels_the_source_migration_once(self):
        stream = self.make(completion_timeout=100)
        self.step(stream, 100)
        self.source.cancel.assert_not_called()
        self.step(stream, 0.5)
        self.source.cancel.assert_called_once_with()
        self.step(stream, 100)
        self.source.cancel.assert_called_once_with()
        status = stream.status()
        self.assertIn('completion timeout 100 s', status['timed_out'])
        self.assertEqual(status['timed_out'], status['error'])

    def test_force_complete_forces_the_switch_over(self):
        stream = self.make(completion_timeout=100,
                           timeout_action='force_complete')
        self.step(stream, 101)
        self.source.cancel.assert_not_called()
        self.assertEqual(source_stream.MAX_DOWNTIME_MS,
                         self.parameters()[-1]['downtime_limit_ms'])

    def test_it_counts_during_warm_up_too(self):
        stream = self.make(completion_timeout=100, warm_up=True)
        self.step(stream, 101)
        self.source.cancel.assert_called_once_with()

    def test_no_timeout_by_default(self):
        stream = self.make()
        self.step(stream, 10 ** 6)
        self.source.cancel.assert_not_called()

    def test_a_forced_switch_over_is_never_aborted(self):
        stream = self.make(completion_timeout=100)
        stream.switch_over()
        self.step(stream, 1)
        self.step(stream, 200)
        self.source.cancel.assert_not_called()

    def test_the_engine_wakes_at_the_timeout(self):
        stream = self.make(completion_timeout=100, sample_interval=60)
        self.clock.now += 99.5
        self.assertAlmostEqual(0.5, stream._next_wake())

    def test_an_injected_clock_drives_it(self):
        now = [0.0]
        stream = source_stream.SourceStream(
            self.source, self.relay,
            source_stream.StreamSettings(completion_timeout=10),
            clock=lambda: now[0])
        stream.start(lambda func: None)
        self.addCleanup(stream.close)
        now[0] = 11.0
        stream._advance()
        self.source.cancel.assert_called_once_with()


class MultifdTest(StreamTestBase):

    def test_channels_turn_multifd_on_at_both_ends(self):
        stream = self.make(multifd_channels=4)
        self.source.set_capabilities.assert_called_once_with(
            {'multifd': True, 'events': True})
        self.assertEqual(4, self.parameters()[0]['multifd_channels'])
        self.assertEqual({'multifd': True},
                         stream.settings.shared_capabilities())


class SettingsTest(testtools.TestCase):

    def test_defaults_are_valid(self):
        source_stream.StreamSettings().validate()

    def test_rejected(self):
        cases = [
            ({'capabilities': {'bogus': True}}, "'bogus'"),
            ({'warm_up_exit': 'never'}, "'never'"),
            ({'warm_up_percent': 0}, 'warm_up_percent'),
            ({'downtime_limit_ms': 0}, 'downtime_limit_ms'),
            ({'max_bandwidth': -1}, 'max_bandwidth'),
            ({'switch_over_timeout': 0}, 'switch_over_timeout'),
            ({'downtime_steps': ((10, 50), (5, 60))}, 'ascending'),
            ({'downtime_steps': ((0, 0),)}, 'downtime step'),
            ({'completion_timeout': -1}, 'completion_timeout'),
            ({'timeout_action': 'pause'}, "'pause'"),
            ({'multifd_channels': 256}, 'multifd_channels'),
            ({'multifd_channels': 2, 'capabilities': {'multifd': False}},
             'multifd'),
        ]
        for kwargs, text in cases:
            with self.subTest(kwargs=kwargs):
                settings = source_stream.StreamSettings(**kwargs)
                err = self.assertRaises(exceptions.InvalidSettings,
                                        settings.validate)
                self.assertIn(text, str(err))

    def test_capabilities_a_one_way_stream_cannot_carry(self):
        for name in ('return-path', 'postcopy-ram', 'release-ram',
                     'pause-before-switchover'):
            with self.subTest(capability=name):
                settings = source_stream.StreamSettings(
                    capabilities={name: True})
                err = self.assertRaises(exceptions.UnsupportedCapability,
                                        settings.validate)
                self.assertIn(name, str(err))
                self.assertIn('Turn it off', str(err))

    def test_disabled_unsupported_capability_is_fine(self):
        settings = source_stream.StreamSettings(
            capabilities={'return-path': False, 'multifd': True})
        settings.validate()
        self.assertEqual({'multifd': True}, settings.shared_capabilities())

    def test_the_stream_refuses_bad_settings_before_touching_the_guest(self):
        source = mock.Mock()
        self.assertRaises(
            exceptions.UnsupportedCapability, source_stream.SourceStream,
            source, mock.Mock(), source_stream.StreamSettings(
                capabilities={'return-path': True}))
        self.assertEqual([], source.mock_calls)


class ThrottleLogTest(StreamTestBase):

    def test_each_throttle_change_is_logged_once(self):
        stream = self.make()
        with mock.patch.object(source_stream, 'LOG') as log:
            for throttle in (0, 20, 20, 30):
                self.stats = hypervisor.MigrationStats(
                    status=vocabulary.QemuStatus.ACTIVE,
                    throttle_percent=throttle, dirty_rate=5e7,
                    bandwidth=1e7, iterations=4)
                self.step(stream, 1)
        self.assertEqual([20, 30], [c[0][2] for c in log.info.call_args_list
                                    if c[0][0].startswith('Auto-converge')])
        self.assertEqual(30, stream.status()['throttle_percent'])
