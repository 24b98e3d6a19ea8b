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

"""When a warm-up migration is ready to switch over.

During warm-up the source keeps pre-copying until someone asks for the
switch-over; meanwhile the operator (and Nova) want to know whether a
switch-over now would be quick. Each live destination is judged on its
own, because in a multi-destination migration they do not receive at the
same pace: a destination is ready when its exit condition holds for it,
and the migration is ready when ``percent`` % of the live destinations
are. Pure arithmetic on samples, so it is unit-tested without QEMU.
"""

import dataclasses
import math
import typing

from nova_multidest import vocabulary

# Weight of the newest sample in the smoothed delivery rate.
RATE_SMOOTHING = 0.5
# QEMU reports the guest's dirty rate as 0 until it measured it over at
# least a second of migration; until then a low estimate would be a lie.
DIRTY_RATE_PERIOD = 1.0


@dataclasses.dataclass
class DestinationSample:
    """What one destination had received when the sample was taken."""

    received: int
    live: bool = True


@dataclasses.dataclass
class WarmUpState:
    ready: bool
    ready_destinations: typing.List[str]
    expected_downtime_ms: typing.Dict[str, float]


class WarmUpMonitor(object):
    """Evaluates the warm-up exit condition on successive samples.

    ``copied``: every page was sent at least once (the source started its
    second dirty-bitmap pass) *and* this destination has received every
    byte the source had written by then.

    ``downtime``: the switch-over would stop the guest for less than
    ``downtime_limit_ms`` on this destination. At a switch-over the
    destination must still receive its backlog (stream bytes the relay
    holds for it) plus what is still dirty: the source's ``remaining``
    plus what the guest dirtied since the last bitmap sync, estimated as
    dirty rate times the sync period. That, divided by the rate at which
    this destination has been receiving, is the expected downtime. It is
    trusted only once QEMU has measured the dirty rate (a bitmap sync
    more than a second into the migration).
    """

    def __init__(self, exit_condition, percent, downtime_limit_ms):
        self.exit_condition = exit_condition
        self.percent = percent
        self.downtime_limit_ms = downtime_limit_ms
        self._copied_mark = None
        self._first_sample_at = None
        self._rate_iterations = None
        self._last = None
        self._rates = {}
        self.state = WarmUpState(False, [], {})

    def update(self, now, stats, bytes_from_source, destinations):
        """Take one sample; return the new WarmUpState.

        ``stats`` is the source's MigrationStats, ``destinations`` maps a
        name to its DestinationSample.
        """
        if self._first_sample_at is None:
            self._first_sample_at = now
        if (self._rate_iterations is None and
                now - self._first_sample_at >= DIRTY_RATE_PERIOD):
            self._rate_iterations = stats.iterations
        dirty_rate_known = (self._rate_iterations is not None and
                            stats.iterations > self._rate_iterations)
        sync_period = self._sync_period(now, stats)
        for name, sample in destinations.items():
            self._update_rate(name, now, sample.received)
        self._last = (now, stats.iterations,
                      {n: s.received for n, s in destinations.items()})
        if self._copied_mark is None and stats.first_pass_done:
            self._copied_mark = stats.transferred

        live = {n: s for n, s in destinations.items() if s.live}
        pending = stats.remaining + stats.dirty_rate * sync_period
        downtimes = {}
        ready = []
        for name, sample in sorted(live.items()):
            backlog = max(0, bytes_from_source - sample.received)
            downtimes[name] = self._expected_ms(
                pending + backlog, self._rates.get(name) or stats.bandwidth)
            if self.exit_condition == vocabulary.WarmUpExit.COPIED:
                ok = (self._copied_mark is not None and
                      sample.received >= self._copied_mark)
            else:
                ok = (stats.first_pass_done and dirty_rate_known and
                      downtimes[name] <= self.downtime_limit_ms)
            if ok:
                ready.append(name)
        needed = math.ceil(len(live) * self.percent / 100.0)
        self.state = WarmUpState(bool(live) and len(ready) >= needed,
                                 ready, downtimes)
        return self.state

    def _sync_period(self, now, stats):
        if self._last is None:
            return 0.0
        then, iterations, _ = self._last
        syncs = stats.iterations - iterations
        return (now - then) / syncs if syncs > 0 else now - then

    def _update_rate(self, name, now, received):
        if self._last is None:
            return
        then, _, before = self._last
        if name not in before or now <= then:
            return
        rate = (received - before[name]) / (now - then)
        old = self._rates.get(name)
        self._rates[name] = rate if old is None else (
            RATE_SMOOTHING * rate + (1 - RATE_SMOOTHING) * old)

    @staticmethod
    def _expected_ms(size, rate):
        if size <= 0:
            return 0.0
        if not rate or rate <= 0:
            return math.inf
        return size / rate * 1000.0
