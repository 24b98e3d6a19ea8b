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

"""The session engine with real QEMU guests and the real stream relay."""

import os
import random
import signal

from nova_multidest.dataplane import protocol
from nova_multidest import exceptions
from nova_multidest import vocabulary
from tests.dataplane import demo_session_base

MiB = demo_session_base.MiB


class IdenticalStateTest(demo_session_base.SessionTestBase):
    """Every surviving destination holds exactly the source's state."""

    def _migrate(self, count, topology=vocabulary.Topology.STAR):
        self.boot(fill_mb=32)
        names = ['d%d' % i for i in range(count)]
        result = self.make_session(names, topology=topology).run(60)
        self.assert_winner_only(result)
        self.assert_identical_survivors(names)
        self.assertEqual({}, {n: r for n, r in result.reasons.items()
                              if 'lost the election' not in r})
        self.assertGreater(result.downtime_ms, 0)
        self.assertLess(result.downtime_ms, result.total_time_s * 1000)
        for name in names:
            self.assertGreaterEqual(result.bytes_by_destination[name],
                                    32 * MiB)

    def test_one_destination(self):
        self._migrate(1)

    def test_two_destinations(self):
        self._migrate(2)

    def test_three_destinations_star(self):
        self._migrate(3)

    def test_three_destinations_chain(self):
        self._migrate(3, topology=vocabulary.Topology.CHAIN)


class DestinationFailureTest(demo_session_base.SessionTestBase):

    def setUp(self):
        super().setUp()
        self.kill = {}
        self.killed = []

    def on_progress(self, progress):
        for name, at_percent in list(self.kill.items()):
            state = progress.get(name)
            streaming = vocabulary.DestinationState.STREAMING
            if (state and state.state == streaming and
                    state.percent >= at_percent):
                del self.kill[name]
                self.destinations[name].process.kill(signal.SIGKILL)
                self.killed.append(name)

    def _slow_stream(self, bandwidth=64 * MiB):
        # 48 MiB of real data at 64 MiB/s: about a second of streaming,
        # sampled every 50 ms, so kills land inside the stream.
        self.boot(fill_mb=48)
        return dict(max_bandwidth=bandwidth, sample_interval=0.05)

    def test_sigkill_each_destination_at_random_points(self):
        seed = int(os.environ.get('MULTIDEST_SEED') or
                   random.SystemRandom().randrange(1 << 30))
        print('random seed %d (set MULTIDEST_SEED to replay)' % seed)
        rng = random.Random(seed)
        for victim in range(3):
            with self.subTest(victim=victim):
                self.snapshots = {}
                self.destinations = {}
                self.killed = []
                # Progress counts bytes that reached each agent; on a
                # loaded machine the sampler may skip a second, so the
                # stream lasts two and no kill is planned past 60 %.
                self.kill = {'d%d' % victim: rng.uniform(5, 60)}
                names = ['d0', 'd1', 'd2']
                migration = self.make_session(
                    names, **self._slow_stream(bandwidth=24 * MiB))
                result = migration.run(60)
                self.assertEqual(['d%d' % victim], self.killed,
                                 'seed %d' % seed)
                self.assert_winner_only(result)
                self.assertIn('d%d' % victim, result.reasons)
                survivors = [n for n in names if n != 'd%d' % victim]
                self.assert_identical_survivors(survivors)
                self.process.destroy()

    def test_destination_cut_off_by_relay(self):
        settings = self._slow_stream()
        names = ['d0', 'd1', 'd2']

        def cut(progress):
            d1 = progress.get('d1')
            streaming = vocabulary.DestinationState.STREAMING
            if d1 and d1.state == streaming and d1.percent > 20:
                migration.drop_destination('d1', 'cut off by the test')
        self.on_progress = cut
        migration = self.make_session(names, **settings)
        result = migration.run(60)
        self.assert_winner_only(result)
        self.assertEqual('cut off by the test', result.reasons['d1'])
        self.assertLess(result.bytes_by_destination['d1'],
                        result.bytes_by_destination[result.winner])
        self.assert_identical_survivors(['d0', 'd2'])

    def test_slow_destination_dropped_by_lag_policy(self):
        self.boot(fill_mb=48)
        names = ['d0', 'slow', 'd2']
        result = self.make_session(names, slow=['slow'],
                                   lag_limit=16 * MiB).run(60)
        self.assert_winner_only(result)
        self.assertIn('lag limit', result.reasons['slow'])
        self.assertLess(result.bytes_by_destination['slow'], 40 * MiB)
        # On a loaded machine a normal destination may lag too; whichever
        # were not dropped must be identical.
        survivors = [n for n in ('d0', 'd2') if 'lost the election' in
                     result.reasons.get(n, 'lost the election')]
        self.assertIn(result.winner, survivors)
        self.assert_identical_survivors(survivors)

    def test_all_destinations_fail_source_keeps_running(self):
        settings = self._slow_stream()
        self.kill = {'d0': 20, 'd1': 30}
        result = self.make_session(['d0', 'd1'], **settings).run(60)
        self.assertIsNone(result.winner)
        self.assertEqual(['d0', 'd1'], sorted(self.killed))
        self.assertIn('every destination failed', result.error)
        self.assertEqual('running', self.process.run_state())
        self.assert_guest_advances(self.process)
        for dest in self.destinations.values():
            self.assertFalse(dest.is_alive())
            self.assertFalse(os.path.exists(dest.process.dir))

    def test_fewer_than_minimum_left_keeps_source(self):
        settings = self._slow_stream()
        self.kill = {'d1': 20}
        result = self.make_session(['d0', 'd1'], min_destinations=2,
                                   **settings).run(60)
        self.assertIsNone(result.winner)
        self.assertIn('fewer than the minimum of 2', result.error)
        self.assertEqual('running', self.process.run_state())
        self.assert_guest_advances(self.process)
        for dest in self.destinations.values():
            self.assertFalse(dest.is_alive())

    def test_another_round_on_other_destinations(self):
        settings = self._slow_stream()
        self.kill = {'d0': 20}
        calls = []

        def more(round_no, reasons):
            calls.append((round_no, sorted(reasons)))
            return ['e0', 'e1']
        migration = self.make_session(['d0'], max_rounds=2, **settings)
        migration.more_destinations = more
        result = migration.run(60)
        self.assertEqual([(1, ['d0'])], calls)
        self.assertEqual(2, result.rounds)
        self.assertIn(result.winner, ('e0', 'e1'))
        self.assert_winner_only(result)
        # Both copies hold the same stream. Against the source they may
        # not: QEMU 7.2 under TCG loses guest writes from a migration
        # started after a failed one, relay or not (README, "Known
        # issues"), so the source's RAM is not compared here.
        self.assertEqual(['e0', 'e1'], sorted(
            n for n in self.snapshots if n != 'source'))
        self.assertEqual(self.snapshots['e0'], self.snapshots['e1'],
                         'the second round\'s copies differ')


class ElectionTest(demo_session_base.SessionTestBase):

    def test_winner_failing_to_resume_elects_next_completed(self):
        self.boot(fill_mb=16)
        candidates = []

        def approve(name):
            candidates.append(name)
            if len(candidates) == 1:
                # Completed but dies before it could run.
                self.destinations[name].process.kill(signal.SIGKILL)
                self.destinations[name].process.wait(10)
            return True
        result = self.make_session(['d0', 'd1', 'd2'],
                                   approve=approve).run(60)
        self.assertEqual(2, len(candidates))
        self.assertEqual(candidates[1], result.winner)
        self.assert_winner_only(result)
        self.assertIn('failed to resume', result.reasons[candidates[0]])

    def test_events_alone_move_the_switch_over(self):
        """No progress sample falls within this migration.

        The first pass (64 MiB at 64 MiB/s) outlasts QEMU's first
        bandwidth sample, so the stream holds it at a 1 ms downtime limit,
        on which a guest dirtying 256 KiB per ms never converges at 64 KiB
        per ms: only the pass event
        can release the real limit, and only the completion event can
        elect the winner.
        """
        self.boot(fill_mb=16, pages_per_tick=64)
        result = self.make_session(['d0'], max_bandwidth=64 * MiB,
                                   sample_interval=3600).run(60)
        self.assert_winner_only(result)
        self.assert_identical_survivors(['d0'])

    def test_refused_approval_resumes_nothing_but_the_source(self):
        self.boot(fill_mb=16)
        approvals = []

        def approve(name):
            approvals.append(name)
            return False
        result = self.make_session(['d0', 'd1'], approve=approve).run(60)
        self.assertEqual(1, len(approvals))
        self.assertIsNone(result.winner)
        self.assertIn('winner not approved', result.error)
        self.assertTrue(result.source_resumed)
        self.assertEqual('running', self.process.run_state())
        self.assert_guest_advances(self.process)
        for dest in self.destinations.values():
            self.assertFalse(dest.is_alive())

    def test_stray_connection_with_wrong_secret_refused(self):
        self.boot(fill_mb=16)
        refused = []

        def approve(name):
            for dest in self.destinations.values():
                try:
                    protocol.connect(dest.stream_address,
                                     protocol.new_secret(), {'role': 'x'},
                                     timeout=5)
                except exceptions.AuthenticationFailed as exc:
                    refused.append(str(exc))
            return True
        result = self.make_session(['d0', 'd1'], approve=approve).run(60)
        self.assertEqual(2, len(refused), refused)
        self.assert_winner_only(result)
        self.assert_identical_survivors(['d0', 'd1'])


class WarmUpTest(demo_session_base.SessionTestBase):

    def _hold_then_switch(self, **settings):
        # The hold lasts while the guest dirties more than bandwidth x 1 ms
        # between two bitmap syncs. A capped bandwidth keeps that true even
        # when other tests starve the guest of CPU.
        self.boot(fill_mb=16, pages_per_tick=0)
        migration = self.make_session(['d0', 'd1'], warm_up=True,
                                      max_bandwidth=32 * MiB,
                                      sample_interval=0.05, **settings)
        migration.start()
        if not migration.warm_up_ready.wait(30):
            self.fail('warm-up not ready: %s; source %s; destinations %s'
                      % (migration.warm_up_state, self.source.stats(),
                         migration.progress()))
        # Held: still pre-copying pass after pass, guest running.
        first = self.source.stats()
        self.assertTrue(demo_session_base.wait_for(
            lambda: self.source.stats().iterations >= first.iterations + 5,
            timeout=10))
        self.assertEqual('active', self.source.stats().status)
        self.assertEqual('running', self.process.run_state())
        self.assertEqual({}, self.snapshots)
        migration.switch_over()
        result = migration.wait(60)
        self.assert_winner_only(result)
        self.assert_identical_survivors(['d0', 'd1'])
        return migration, result

    def test_held_until_switch_over_exit_copied(self):
        migration, _ = self._hold_then_switch(warm_up_exit='copied')
        self.assertEqual(['d0', 'd1'],
                         migration.warm_up_ready_state.ready_destinations)

    def test_held_until_switch_over_exit_downtime(self):
        # A generous limit: on a loaded two-core machine the delivery rate
        # varies a lot, and this test is about the hold, not the rate.
        migration, _ = self._hold_then_switch(warm_up_exit='downtime',
                                              downtime_limit_ms=2000)
        # The state that released the hold: by the end of the migration a
        # destination that took its last pages after the leader no longer
        # meets the condition.
        state = migration.warm_up_ready_state
        self.assertEqual(['d0', 'd1'], state.ready_destinations)
        self.assertTrue(all(state.expected_downtime_ms[n] <= 2000
                            for n in state.ready_destinations))

    def test_downtime_condition_not_met_is_not_ready(self):
        self.boot(fill_mb=16, dirty_mb=32, delay=0, pages_per_tick=0)
        migration = self.make_session(
            ['d0'], warm_up=True, warm_up_exit='downtime',
            downtime_limit_ms=1, switch_over_timeout=1, sample_interval=0.05)
        migration.start()
        self.assertFalse(migration.warm_up_ready.wait(2))
        self.assertGreater(migration.warm_up_state.expected_downtime_ms['d0'],
                           1)
        migration.switch_over()
        result = migration.wait(60)
        self.assert_winner_only(result)
        self.assert_identical_survivors(['d0'])

    def test_nearly_idle_guest_completes_without_switch_over(self):
        # QEMU 7.2 cannot hold pre-copy on a guest that dirties less than
        # bandwidth x 1 ms per pass: it stops the guest and completes on
        # its own, and the session goes on with the election rather than
        # leave the guest paused until a switch-over command.
        self.boot(fill_mb=16, pages_per_tick=1)
        migration = self.make_session(['d0'], warm_up=True)
        result = migration.run(60)
        self.assertFalse(migration.switch_over_requested.is_set())
        self.assert_winner_only(result)
        self.assert_identical_survivors(['d0'])


class BadSettingsTest(demo_session_base.SessionTestBase):

    def test_rejected_before_anything_starts(self):
        self.boot()
        cases = [
            ([], {}, exceptions.InvalidSettings, 'at least one'),
            (['a', 'a'], {}, exceptions.InvalidSettings, 'more than once'),
            (['a'], {'capabilities': {'return-path': True}},
             exceptions.UnsupportedCapability, 'return-path'),
            (['a'], {'capabilities': {'postcopy-ram': True}},
             exceptions.UnsupportedCapability, 'postcopy-ram'),
            (['a'], {'capabilities': {'warp-drive': True}},
             exceptions.InvalidSettings, 'warp-drive'),
            (['a'], {'topology': 'ring'}, exceptions.InvalidSettings,
             'ring'),
            (['a'], {'min_destinations': 2}, exceptions.InvalidSettings,
             'min_destinations'),
        ]
        for names, settings, error, text in cases:
            with self.subTest(names=names, settings=settings):
                err = self.assertRaises(error, self.make_session, names,
                                        **settings)
                self.assertIn(text, str(err))
        self.assertEqual([self.process],
                         self.qemu.hypervisor.live_processes())
        self.assertEqual('none', self.source.stats().status)
        self.assertEqual('running', self.process.run_state())
