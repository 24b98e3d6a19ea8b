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

"""The demo's migration: every destination on this host, election here.

In Nova the conductor elects the winner among destinations on other
hosts (``conductor/group.py``); the demo (``cmd/demo.py``), the data-plane
tests and the data-plane benchmark have no conductor, so this session
plays its part over the ``hypervisor`` interface on one host: it
prepares N paused incoming destinations, streams the source through the
relay to all of them with the source-side engine Nova runs
(``source_stream.py``: warm-up, switch-over, forcing), elects the first
destination whose incoming migration completed, lets only that one run,
and removes every other one. If no destination makes it, the source runs
on; a callback may name other destinations for another round.

A (nearly) idle guest cannot be held in warm-up (QEMU stops it and
completes by itself): the session then elects a winner without waiting
for the switch-over command, since the guest is already paused.

Safety rules the code keeps, in order of importance:

* at most one copy ever runs: a destination runs only after
  ``approve_winner`` accepted it, and once any destination's guest has
  run, neither another destination nor the source is ever resumed;
* until a winner runs, the source keeps a complete state (the engine
  refuses capabilities that would free or hand over source memory);
* bad settings are refused before anything is started.
"""

import collections
import dataclasses
import functools
import logging
import queue
import threading
import time
import typing

from nova_multidest.dataplane import hypervisor as hv
from nova_multidest.dataplane import protocol
from nova_multidest.dataplane import relay
from nova_multidest.dataplane import source_stream
from nova_multidest import exceptions
from nova_multidest import vocabulary

LOG = logging.getLogger(__name__)

# Seconds to wait for the source's STOP event once a winner runs.
SOURCE_EVENT_GRACE = 5.0


@dataclasses.dataclass
class Settings(source_stream.StreamSettings):
    """The source stream's settings plus what the session decides alone.

    The session samples progress more often than a compute host does:
    the demo draws it.
    """

    topology: str = vocabulary.Topology.STAR
    lag_limit: int = 256 << 20
    min_destinations: int = 1
    completion_timeout: float = 1800.0
    election_timeout: float = 60.0
    max_rounds: int = 1
    listen_host: str = '127.0.0.1'
    sample_interval: float = 0.1

    def validate(self, destinations=None):
        super().validate()
        if destinations is None:
            return

        def bad(reason):
            raise exceptions.InvalidSettings(reason=reason)

        if not destinations:
            bad('at least one destination is needed')
        duplicates = sorted(n for n, c in
                            collections.Counter(destinations).items()
                            if c > 1)
        if duplicates:
            bad('destination listed more than once: %s'
                % ', '.join(duplicates))
        if self.topology not in vocabulary.Topology.ALL:
            bad('unknown topology %r; use one of: %s'
                % (self.topology, ', '.join(vocabulary.Topology.ALL)))
        if not 1 <= self.min_destinations <= len(destinations):
            bad('min_destinations must be between 1 and the %d destinations'
                ' given' % len(destinations))
        if self.lag_limit <= 0:
            bad('lag_limit must be > 0')
        if self.max_rounds < 1:
            bad('max_rounds must be at least 1')
        for name in ('completion_timeout', 'election_timeout'):
            if getattr(self, name) <= 0:
                bad('%s must be positive' % name)


@dataclasses.dataclass(frozen=True)
class DestinationProgress:
    state: str
    bytes: int
    percent: float
    reason: typing.Optional[str] = None


@dataclasses.dataclass
class SessionResult:
    """What happened.

    ``downtime_ms`` is from the source's STOP event to the winner's
    RESUME event (hypervisor timestamps): the time the guest ran nowhere.
    It includes ``approval_ms``, the time ``approve_winner`` took.
    ``total_time_s`` is from the migrate command to that RESUME, which
    happened at ``resumed_at`` (wall clock, to line up migrations that ran
    at once).
    ``completion_s`` says when each destination that completed before the
    election reported the complete state, in seconds after the migrate
    command.
    """

    winner: typing.Optional[str] = None
    downtime_ms: typing.Optional[float] = None
    total_time_s: typing.Optional[float] = None
    resumed_at: typing.Optional[float] = None
    bytes_by_destination: typing.Dict[str, int] = dataclasses.field(
        default_factory=dict)
    bytes_from_source: int = 0
    reasons: typing.Dict[str, str] = dataclasses.field(default_factory=dict)
    completion_s: typing.Dict[str, float] = dataclasses.field(
        default_factory=dict)
    approval_ms: typing.Optional[float] = None
    rounds: int = 0
    source_resumed: bool = False
    error: typing.Optional[str] = None

    @property
    def succeeded(self):
        return self.winner is not None


class _RoundFailed(Exception):
    pass


@dataclasses.dataclass
class _RoundState:
    """Deadlines of one round, as the session loop sees them."""

    started: float
    source_done_at: typing.Optional[float] = None
    stats: hv.MigrationStats = dataclasses.field(
        default_factory=lambda: hv.MigrationStats(
            status=vocabulary.QemuStatus.SETUP))


class Session(object):
    """Migrates ``source`` to the named destinations; see module doc.

    Callbacks, all optional, are called from the session thread:

    ``approve_winner(name) -> bool``: called once a destination holds the
      complete state, before it may run (Nova records the winner durably
      at this point). False or an exception: nothing resumes on any
      destination, and the source runs on.
    ``on_progress({name: DestinationProgress})``: after each sample.
    ``more_destinations(round, reasons) -> [names]``: when every
      destination of a round failed; the names of another round, or an
      empty list to stop (at most ``max_rounds`` rounds).
    ``on_destination_ready(name, destination)``: after a destination was
      created and is listening, before the stream starts (tests use it).
    """

    def __init__(self, hypervisor, source, destinations, settings=None,
                 approve_winner=None, on_progress=None,
                 more_destinations=None, on_destination_ready=None):
        self.settings = settings or Settings()
        self.settings.validate(list(destinations))
        self.hypervisor = hypervisor
        self.source = source
        self.names = list(destinations)
        self.approve_winner = approve_winner or (lambda name: True)
        self.on_progress = on_progress
        self.more_destinations = more_destinations
        self.on_destination_ready = on_destination_ready
        self.result = SessionResult()
        self.warm_up_ready = threading.Event()
        # The WarmUpState that met the exit condition first; the latest
        # one (warm_up_state) moves on, through the stop phase too.
        self.warm_up_ready_state = None
        self.switch_over_requested = threading.Event()
        self._events = queue.Queue()
        self._done = threading.Event()
        self._thread = None
        self._lock = threading.Lock()
        self._progress = {}
        self._dests = {}
        self._relay = None
        self._stream = None
        self._resumed_at = {}
        self._source_stopped_at = None
        self._a_guest_ran = False
        self._source_stopped = threading.Event()
        self._started = None
        source.subscribe(self._on_source_event)

    # -- public ----------------------------------------------------------

    def start(self):
        """Start the migration in a background thread and return."""
        self._thread = threading.Thread(target=self._run,
                                        name='multidest-session',
                                        daemon=True)
        self._thread.start()

    def run(self, timeout=None):
        """Start, then wait for the SessionResult.

        With warm-up, another thread must call ``switch_over()``.
        """
        self.start()
        return self.wait(timeout)

    def wait(self, timeout=None):
        if not self._done.wait(timeout):
            raise exceptions.MultiDestError(
                'The migration did not finish in %ss; call abort() to give '
                'up and keep the guest on its source.' % timeout)
        return self.result

    def finished(self):
        return self._done.is_set()

    def switch_over(self):
        """End warm-up: let the migration converge and finish."""
        self.switch_over_requested.set()
        self._events.put(('switch-over', None))

    def drop_destination(self, name, reason):
        """Cut one destination off and remove it; the others go on."""
        self._events.put(('drop', (name, reason)))

    def abort(self, reason='aborted by request'):
        """Give up: the guest stays on (or returns to) the source.

        Too late once a destination's guest has run.
        """
        self._events.put(('abort', reason))

    def progress(self):
        with self._lock:
            return dict(self._progress)

    @property
    def warm_up_state(self):
        """The source stream's latest WarmUpState, if it warms up."""
        stream = self._stream
        return stream.warm_up_state if stream is not None else None

    # -- event intake (hypervisor, relay and stream threads) --------------

    def _on_source_event(self, event):
        if event.kind == hv.EVENT_STOPPED and self._source_stopped_at is None:
            self._source_stopped_at = event.timestamp
            self._source_stopped.set()
        self._events.put(('source', event))

    def _on_destination_event(self, event):
        if event.kind == hv.EVENT_RESUMED:
            self._resumed_at.setdefault(event.guest, event.timestamp)
            self._a_guest_ran = True
        self._events.put(('destination', event))

    def _on_relay_drop(self, name, reason):
        self._events.put(('drop', (name, reason)))

    def _on_stream_sample(self, stream, stats, progress):
        self._events.put(('sample', (stream, stats, progress)))

    def _on_warm_up_ready(self, state):
        self.warm_up_ready_state = state
        self.warm_up_ready.set()

    # -- the session thread ------------------------------------------------

    def _run(self):
        names = self.names
        try:
            for round_no in range(1, self.settings.max_rounds + 1):
                self.result.rounds = round_no
                try:
                    self._round(names)
                    return
                except _RoundFailed as exc:
                    LOG.warning('Round %d failed: %s', round_no, exc)
                    self.result.error = str(exc)
                    self._close_stream()
                    self._resume_source()
                if (round_no == self.settings.max_rounds or
                        self.more_destinations is None or
                        self.result.error.startswith('aborted')):
                    break
                names = list(self.more_destinations(
                    round_no, dict(self.result.reasons)) or [])
                if not names:
                    break
                self.settings.validate(names)
        except Exception as exc:
            LOG.exception('Multi-destination session failed')
            self.result.error = 'session error: %s' % exc
            self._remove_all('session error')
            self._resume_source()
        finally:
            self._close_stream()
            self._done.set()

    def _close_stream(self):
        if self._stream is not None:
            self._stream.close()
        elif self._relay is not None:
            self._relay.close()
        self._relay = None

    def _set_progress(self, name, state=None, received=None, percent=None,
                      reason=None):
        with self._lock:
            old = self._progress.get(name, DestinationProgress(
                vocabulary.DestinationState.PREPARING, 0, 0.0))
            self._progress[name] = DestinationProgress(
                state or old.state,
                old.bytes if received is None else received,
                old.percent if percent is None else percent,
                reason or old.reason)

    def _prepare(self, names, secret):
        shared = self.settings.shared_capabilities()
        addresses = []
        for name in names:
            self._set_progress(name, vocabulary.DestinationState.PREPARING,
                               0, 0.0)
            dest = None
            try:
                dest = self.hypervisor.create_destination(name, self.source)
                dest.subscribe(self._on_destination_event)
                dest.start_incoming(shared, self.settings.multifd_channels)
                address = dest.open_stream(
                    secret, listen=(self.settings.listen_host, 0))
            except Exception as exc:
                LOG.warning('Destination %s could not be prepared: %s',
                            name, exc)
                self._fail(name, 'preparation failed: %s' % exc, dest)
                continue
            self._dests[name] = dest
            addresses.append((name, address))
            if self.on_destination_ready is not None:
                self.on_destination_ready(name, dest)
        if len(addresses) < self.settings.min_destinations:
            raise _RoundFailed('only %d of %d destinations could be prepared'
                               ' (minimum %d)' % (
                                   len(addresses), len(names),
                                   self.settings.min_destinations))
        self._relay = relay.StreamRelay(
            secret, addresses, topology=self.settings.topology,
            lag_limit=self.settings.lag_limit, on_drop=self._on_relay_drop)

    def _round(self, names):
        self._dests = {}
        self._completed = []
        self._stream = None
        self._source_stopped_at = None
        self._source_stopped.clear()
        try:
            self._prepare(names, protocol.new_secret())
            state = self._start_stream()
        except exceptions.MultiDestError as exc:
            self._remove_all(str(exc))
            raise _RoundFailed(str(exc))
        while True:
            try:
                kind, payload = self._events.get(
                    timeout=self._until_deadline(state))
            except queue.Empty:
                kind, payload = None, None
            now = time.time()
            self._handle(kind, payload, state)
            if self._completed:
                winner = self._elect()
                if winner is not None:
                    self._finish(winner, state.started)
                    return
            self._check_round(state, now)

    def _start_stream(self):
        """Start the source-side engine into the relay."""
        stream = source_stream.SourceStream(
            self.source, self._relay, self.settings,
            on_ready=self._on_warm_up_ready)
        stream.on_progress = functools.partial(self._on_stream_sample, stream)
        self._stream = stream
        self._started = time.time()
        self._stream.start(self._spawn)
        LOG.info('Migrating %s to %s (%s)', self.source.name,
                 ', '.join(self._dests), self.settings.topology)
        for name in self._dests:
            self._set_progress(name, vocabulary.DestinationState.STREAMING)
        return _RoundState(started=self._started)

    def _spawn(self, func):
        threading.Thread(target=func, daemon=True,
                         name='multidest-stream-%s' % self.source.name).start()

    def _until_deadline(self, state):
        """Seconds until the round's next deadline: nothing else polls."""
        s = self.settings
        if state.source_done_at is None:
            # The engine acts at the completion timeout; its event wakes us.
            return None
        return max(0.0,
                   state.source_done_at + s.election_timeout - time.time())

    def _handle(self, kind, payload, state):
        if kind == 'abort':
            self._cancel_round(payload)
            raise _RoundFailed('aborted: %s' % payload)
        if kind == 'switch-over':
            LOG.info('Switch-over requested for %s', self.source.name)
            self._stream.switch_over()
        elif kind == 'sample':
            stream, stats, progress = payload
            # A sample of an earlier round's stream tells nothing now.
            if stream is self._stream:
                state.stats = stats
                self._sample(stats, progress)
        elif kind == 'destination':
            self._on_dest_event_in_session(payload)
        elif kind == 'drop':
            name, reason = payload
            self._fail(name, reason, self._dests.get(name))

    def _check_round(self, state, now):
        """Raise _RoundFailed, after cleaning up, if the round can't win."""
        s = self.settings
        stats = state.stats
        live = len(self._live())
        if not live:
            self._cancel_round('no destination left')
            raise _RoundFailed('every destination failed')
        if live < s.min_destinations:
            self._cancel_round('too few destinations left')
            raise _RoundFailed(
                'only %d destinations left, fewer than the minimum of %d'
                % (live, s.min_destinations))
        if stats.status in (vocabulary.QemuStatus.FAILED,
                            vocabulary.QemuStatus.CANCELLED):
            self._cancel_round('source migration %s' % stats.status)
            timed_out = self._stream.status()['timed_out']
            raise _RoundFailed('the source migration %s: %s'
                               % (stats.status, timed_out or stats.error))
        if (stats.status == vocabulary.QemuStatus.COMPLETED or
                self._source_stopped_at is not None):
            state.source_done_at = state.source_done_at or now
            if now - state.source_done_at > s.election_timeout:
                self._cancel_round('no destination completed')
                raise _RoundFailed(
                    'no destination completed within %ss of the '
                    'switch-over' % s.election_timeout)

    def _sample(self, stats, relay_progress):
        self.result.bytes_from_source = self._relay.bytes_from_source
        # Unknown until QEMU has sized its first pass.
        expected = (stats.transferred + stats.remaining
                    if stats.remaining or stats.transferred else 0)
        live = self._live()
        for name, prog in relay_progress.items():
            if name not in live:
                continue
            self.result.bytes_by_destination[name] = prog.bytes_sent
            state = self._progress.get(name)
            if state is not None and state.state == (
                    vocabulary.DestinationState.COMPLETED):
                percent = 100.0
            elif expected:
                percent = min(99.0, 100.0 * prog.bytes_sent / expected)
            else:
                percent = 0.0
            self._set_progress(name, received=prog.bytes_sent,
                               percent=percent)
        if self.on_progress is not None:
            self.on_progress(self.progress())

    def _live(self):
        live = vocabulary.DestinationState.LIVE
        return [name for name in self._dests
                if self._progress[name].state in live]

    def _on_dest_event_in_session(self, event):
        name = event.guest
        if name not in self._dests or name not in self._live():
            return
        if event.kind == hv.EVENT_MIGRATION:
            if event.status == vocabulary.QemuStatus.COMPLETED:
                LOG.info('Destination %s holds the complete state', name)
                self.result.completion_s[name] = (event.timestamp -
                                                  self._started)
                self._set_progress(name, vocabulary.DestinationState.COMPLETED,
                                   percent=100.0)
                self._completed.append(name)
            elif event.status in (vocabulary.QemuStatus.FAILED,
                                  vocabulary.QemuStatus.CANCELLED):
                self._fail(name, 'incoming migration %s' % event.status,
                           self._dests[name])
        elif event.kind == hv.EVENT_EXITED:
            self._fail(name, 'hypervisor exited (%s)' % event.detail,
                       self._dests[name])

    def _elect(self):
        """Resume the first completed destination; None if none can run.

        A candidate that fails to run before its guest ever ran is removed
        and the next completed one is tried; once one ran, no other.
        """
        while self._completed:
            name = self._completed.pop(0)
            if name not in self._live():
                continue
            dest = self._dests[name]
            approval_started = time.monotonic()
            try:
                approved = self.approve_winner(name)
            except Exception as exc:
                LOG.exception('approve_winner refused %s', name)
                approved = False
                reason = 'winner not approved: %s' % exc
            else:
                reason = 'winner not approved'
            self.result.approval_ms = (time.monotonic() -
                                       approval_started) * 1000
            if not approved:
                self._cancel_round(reason)
                raise _RoundFailed('aborted: %s (%s)' % (reason, name))
            try:
                dest.resume()
            except Exception as exc:
                if self._a_guest_ran or self._ran(name):
                    raise
                LOG.warning('Elected %s failed to resume: %s; electing the '
                            'next', name, exc)
                self._fail(name, 'failed to resume: %s' % exc, dest)
                continue
            LOG.info('Elected %s', name)
            return name
        return None

    def _ran(self, name):
        return name in self._resumed_at

    def _finish(self, winner, started):
        self._set_progress(winner, vocabulary.DestinationState.RUNNING,
                           percent=100.0)
        for name in list(self._dests):
            if name != winner and self._progress[name].state in (
                    vocabulary.DestinationState.LIVE):
                self._fail(name, 'lost the election to %s' % winner,
                           self._dests[name])
        self._dests[winner].close_stream()
        # QMP sends the RESUME event before the reply to cont; a hypervisor
        # without such an event is measured when resume() returned.
        resumed = self._resumed_at.get(winner) or time.time()
        result = self.result
        result.winner = winner
        result.error = None
        result.total_time_s = resumed - started
        result.resumed_at = resumed
        # The source's STOP event comes from another connection than the
        # destination's completion and may still be on its way.
        self._source_stopped.wait(SOURCE_EVENT_GRACE)
        if self._source_stopped_at is not None:
            result.downtime_ms = (resumed - self._source_stopped_at) * 1000
        progress = self._relay.progress()
        result.bytes_from_source = self._relay.bytes_from_source
        for name, prog in progress.items():
            result.bytes_by_destination[name] = prog.bytes_sent
        if self.on_progress is not None:
            self.on_progress(self.progress())

    def _fail(self, name, reason, dest):
        """Cut one destination off and remove it, whatever its state."""
        state = self._progress.get(name)
        gone = vocabulary.DestinationState.GONE
        if state is not None and state.state in gone:
            return
        if self._ran(name):
            LOG.error('Destination %s ran and then failed: %s', name, reason)
        LOG.info('Removing destination %s: %s', name, reason)
        self._set_progress(name, vocabulary.DestinationState.FAILED,
                           reason=reason)
        self.result.reasons[name] = reason
        if self._relay is not None and name in self._relay.live_destinations():
            self._relay.drop(name, reason)
        if dest is not None:
            try:
                dest.destroy()
            except Exception:
                LOG.exception('Could not destroy destination %s', name)
        self._set_progress(name, vocabulary.DestinationState.REMOVED)

    def _remove_all(self, reason):
        for name, dest in list(self._dests.items()):
            self._fail(name, reason, dest)

    def _cancel_round(self, reason):
        """Stop the source migration, then remove every destination.

        Waits for the source migration to settle, because QEMU resumes
        the source itself when a migration it stopped the guest for fails
        or is cancelled, and resuming it ourselves meanwhile would race.
        """
        if self._stream is not None:
            self._stream.abort()
            if not self._stream.wait(self.settings.election_timeout):
                LOG.warning('The migration of %s did not settle within '
                            '%ss of its cancellation', self.source.name,
                            self.settings.election_timeout)
        self._remove_all(reason)

    def _resume_source(self):
        """Let the source run again, unless any copy already ran."""
        if self._a_guest_ran:
            LOG.error('Not resuming the source of %s: a destination copy '
                      'already ran', self.source.name)
            return
        if self.source.is_alive() and not self.source.is_running():
            self.source.resume()
            self.result.source_resumed = True
