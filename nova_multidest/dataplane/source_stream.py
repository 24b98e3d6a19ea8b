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

"""The source side of one multi-destination migration: the one engine.

One outgoing migration of the source guest goes into the relay, which
copies it to every destination. ``SourceStream`` owns that stream for its
whole life, wherever the source runs: in Nova's compute endpoint
(``compute/endpoint.py``) over libvirt, and in the demo's session
(``demo_session.py``) over raw QEMU. What it decides:

* Settings (``StreamSettings``) are checked before anything starts;
  capabilities that would tie the stream to one destination, or free
  source memory before a winner runs, are refused.
* Warm-up holds pre-copy until the switch-over. On QEMU 7.2 a downtime
  limit of 0 does not hold (QEMU never re-syncs after its first pass),
  so the limit is 1 ms; and QEMU's threshold is zero until its first
  bandwidth sample (100 ms), within which a small guest finishes its
  first pass and completes, so the stream starts at a probe bandwidth
  until that sample. An idle guest cannot be held at all: QEMU stops it
  and completes by itself.
* The switch-over is requested with ``switch_over()`` and released once
  every gate is ready: the warm-up exit condition (``warmup.py``) and
  any gate a caller adds (``add_gate``). The real downtime limit then
  applies; a migration not done ``switch_over_timeout`` seconds after the
  request (not ready, or not converging) is forced whatever the
  downtime, and so is a second request.
* The first pass over memory is never cut short. Outside warm-up the
  stream starts at the hold limit and applies its real one when QEMU
  begins its second pass (its MIGRATION_PASS event wakes the engine):
  QEMU would otherwise pause the guest as soon as the rest of its first
  pass fits in the downtime limit at the bandwidth it measured, and copy
  that rest (tens of MiB on a fast link) while the guest runs nowhere.
  A guest whose first pass ends before QEMU's first bandwidth sample
  completes at once, as without the hold.
* Outside warm-up the downtime limit then follows ``downtime_steps``, a
  schedule of (seconds after the start, limit) raised over time as Nova's
  libvirt driver raises it. A migration not complete
  ``completion_timeout`` seconds after its start is cancelled (the source
  runs on and every destination fails) or forced, as ``timeout_action``
  says.
* Events, not polling, move it: the source's migration, pass and stop
  events wake it at once. Only progress, which QEMU reports by no event, is
  sampled, every ``sample_interval``.
* Local disks (``disks``, a ``disk_copy.DiskCopy``) are copied as
  libvirt's block migration copies them: the memory stream starts only
  once every disk mirror is in sync, and QEMU pauses before the
  switch-over (``pause-before-switchover``, enabled here and nowhere
  else) so that the mirrors end complete while the guest cannot write;
  only then does the stream go on. A disk copy that fails cancels the
  migration: the source's disks were only ever read.

Election and the fate of each destination are the caller's; the source
guest only ever resumes when the caller says so, or when QEMU gives up on
its own.
"""

import dataclasses
import logging
import threading
import time
import typing

from nova_multidest.dataplane import hypervisor
from nova_multidest.dataplane import warmup
from nova_multidest import exceptions
from nova_multidest import vocabulary

LOG = logging.getLogger(__name__)

# Capabilities QEMU 7.2 knows.
KNOWN_CAPABILITIES = frozenset((
    'xbzrle', 'rdma-pin-all', 'auto-converge', 'zero-blocks', 'compress',
    'events', 'postcopy-ram', 'x-colo', 'release-ram', 'block',
    'return-path', 'pause-before-switchover', 'multifd', 'dirty-bitmaps',
    'postcopy-blocktime', 'late-block-activate', 'x-ignore-shared',
    'validate-uuid', 'background-snapshot', 'zero-copy-send',
    'postcopy-preempt'))

UNSUPPORTED_CAPABILITIES = {
    'return-path': 'the stream is one-way; with several destinations only '
                   'one could answer the source',
    'postcopy-ram': 'post-copy runs the guest on one destination before '
                    'the others have the state, and needs a return path',
    'postcopy-preempt': 'it is part of post-copy',
    'postcopy-blocktime': 'it is part of post-copy',
    'release-ram': 'it frees source memory as it is sent, so the source '
                   'could not resume if every destination failed',
    'pause-before-switchover': 'the source stream itself decides the '
                               'switch-over',
    'x-colo': 'COLO keeps a secondary running in lockstep',
    'background-snapshot': 'it writes a snapshot, not a migration',
    'rdma-pin-all': 'RDMA bypasses the stream relay',
}

# Capabilities a destination must share with the source.
SHARED_CAPABILITIES = ('multifd', 'xbzrle', 'compress', 'zero-blocks',
                       'x-ignore-shared', 'validate-uuid')

# QEMU's downtime-limit bounds (ms): the smallest that holds pre-copy,
# and the largest, which forces completion whatever the downtime.
HOLD_DOWNTIME_MS = 1
MAX_DOWNTIME_MS = 2000 * 1000
# max-bandwidth meaning "unlimited" (bytes/s); QEMU's 128 MiB/s default
# would otherwise dominate migration time.
UNLIMITED_BANDWIDTH = 1 << 40
# Bandwidth until QEMU's first bandwidth sample during warm-up.
PROBE_BANDWIDTH = 4 << 20
# QEMU's multifd-channels bounds.
MAX_MULTIFD_CHANNELS = 255


@dataclasses.dataclass
class StreamSettings:
    """How the source streams; nova_multidest/conf.py names the options.

    ``max_bandwidth`` is bytes/s, 0 for unlimited. ``downtime_steps`` is
    a schedule of ``(seconds after the start, downtime limit in ms)``,
    ascending; empty means ``downtime_limit_ms`` throughout. A warm-up
    migration holds pre-copy instead and switches over at
    ``downtime_limit_ms``, the limit its exit condition uses, so the
    schedule applies only without warm-up. ``completion_timeout`` is in
    seconds from the start, 0 for none; ``timeout_action`` is a
    ``vocabulary.TimeoutAction``. ``multifd_channels`` > 0 turns on
    QEMU's multifd with that many channels, each relayed on its own hop
    connection.
    """

    capabilities: typing.Mapping[str, bool] = dataclasses.field(
        default_factory=dict)
    max_bandwidth: int = 0
    downtime_limit_ms: int = 500
    warm_up: bool = False
    warm_up_exit: str = vocabulary.WarmUpExit.COPIED
    warm_up_percent: int = 100
    switch_over_timeout: float = 10.0
    sample_interval: float = 0.5
    downtime_steps: typing.Sequence[typing.Tuple[float, int]] = ()
    completion_timeout: float = 0.0
    timeout_action: str = vocabulary.TimeoutAction.ABORT
    multifd_channels: int = 0

    @property
    def bandwidth(self):
        """The max-bandwidth QEMU gets once the stream runs freely."""
        return self.max_bandwidth or UNLIMITED_BANDWIDTH

    def all_capabilities(self):
        """The capabilities the source enables, multifd included."""
        capabilities = dict(self.capabilities)
        if self.multifd_channels:
            capabilities['multifd'] = True
        return capabilities

    def shared_capabilities(self):
        """What each destination must enable too."""
        return {name: state
                for name, state in self.all_capabilities().items()
                if name in SHARED_CAPABILITIES}

    def downtime_at(self, elapsed):
        """The downtime limit ``elapsed`` seconds after the start.

        Nova's rule (``nova.virt.libvirt.migration.update_downtime``): the
        last step whose time has passed, the first one until then.
        """
        if self.warm_up or not self.downtime_steps:
            return self.downtime_limit_ms
        limit = self.downtime_steps[0][1]
        for at, downtime in self.downtime_steps:
            if elapsed > at:
                limit = downtime
        return limit

    def next_step(self, elapsed):
        """Seconds after the start of the next downtime step, or None."""
        if self.warm_up:
            return None
        for at, _downtime in self.downtime_steps:
            if at >= elapsed:
                return at
        return None

    def validate(self):
        """Raise InvalidSettings or UnsupportedCapability, naming the fix."""
        def bad(reason):
            raise exceptions.InvalidSettings(reason=reason)

        for name, enabled in sorted(self.capabilities.items()):
            if name not in KNOWN_CAPABILITIES:
                bad('unknown migration capability %r' % name)
            if enabled and name in UNSUPPORTED_CAPABILITIES:
                raise exceptions.UnsupportedCapability(
                    capability=name, reason=UNSUPPORTED_CAPABILITIES[name])
        if self.warm_up_exit not in vocabulary.WarmUpExit.ALL:
            bad('unknown warm-up exit condition %r; use one of: %s'
                % (self.warm_up_exit, ', '.join(vocabulary.WarmUpExit.ALL)))
        if not 1 <= self.warm_up_percent <= 100:
            bad('warm_up_percent must be between 1 and 100')
        if not 1 <= self.downtime_limit_ms <= MAX_DOWNTIME_MS:
            bad('downtime_limit_ms must be between 1 and %d'
                % MAX_DOWNTIME_MS)
        if self.max_bandwidth < 0:
            bad('max_bandwidth must be >= 0')
        previous = -1
        for at, downtime in self.downtime_steps:
            if at < 0 or at < previous:
                bad('downtime_steps must be ascending times >= 0, not %r'
                    % (list(self.downtime_steps),))
            if not 1 <= downtime <= MAX_DOWNTIME_MS:
                bad('each downtime step must be between 1 and %d ms, not %r'
                    % (MAX_DOWNTIME_MS, downtime))
            previous = at
        if self.completion_timeout < 0:
            bad('completion_timeout must be >= 0 (0 for none)')
        if self.timeout_action not in vocabulary.TimeoutAction.ALL:
            bad('unknown timeout action %r; use one of: %s'
                % (self.timeout_action,
                   ', '.join(vocabulary.TimeoutAction.ALL)))
        if not 0 <= self.multifd_channels <= MAX_MULTIFD_CHANNELS:
            bad('multifd_channels must be between 0 and %d'
                % MAX_MULTIFD_CHANNELS)
        if self.multifd_channels and self.capabilities.get('multifd') is False:
            bad('multifd is turned off but multifd_channels is %d; set '
                'one or the other' % self.multifd_channels)
        for name in ('switch_over_timeout', 'sample_interval'):
            if getattr(self, name) <= 0:
                bad('%s must be positive' % name)


class SourceStream(object):
    """Drives ``source`` into ``relay`` in a thread of its own.

    ``on_progress(stats, destinations)`` is called from that thread after
    every sample and once at the end, with the relay's
    DestinationProgress per destination name. ``on_ready(state)`` is
    called once, the first time the warm-up exit condition holds, with
    its WarmUpState. Neither may raise. ``clock`` gives monotonic
    seconds; tests inject theirs.
    """

    def __init__(self, source, relay, settings=None, on_progress=None,
                 on_ready=None, clock=None, disks=None):
        self.settings = settings or StreamSettings()
        self.settings.validate()
        self._clock = clock or time.monotonic
        self.source = source
        self.relay = relay
        self.disks = disks
        self._disk_error = None
        self._disks_settled = False
        self.on_progress = on_progress
        self.on_ready = on_ready
        self._gates = []
        self._monitor = (
            warmup.WarmUpMonitor(self.settings.warm_up_exit,
                                 self.settings.warm_up_percent,
                                 self.settings.downtime_limit_ms)
            if self.settings.warm_up else None)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._done = threading.Event()
        self._stats = hypervisor.MigrationStats(
            status=vocabulary.QemuStatus.SETUP)
        self._warm_up_state = None
        self._probing = False
        self._holding = self.settings.warm_up
        # Set from the hypervisor's pass event (see _step_downtime).
        self._first_pass_done = False
        self._forced = False
        self._switch_requests = 0
        self._switch_deadline = None
        self._closed = False
        self._started = None
        self._downtime = None
        self._timed_out = None
        source.subscribe(self._on_source_event)

    # -- state, for callers ------------------------------------------------

    @property
    def holding(self):
        """True while pre-copy is held for warm-up."""
        return self._holding

    @property
    def stats(self):
        """The latest MigrationStats sampled."""
        with self._lock:
            return self._stats

    @property
    def warm_up_state(self):
        """The latest WarmUpState, None without warm-up."""
        with self._lock:
            return self._warm_up_state

    def add_gate(self, ready):
        """Hold the switch-over until ``ready()`` is true too."""
        self._gates.append(ready)

    # -- commands ----------------------------------------------------------

    def start(self, spawn):
        """Start streaming; ``spawn(func)`` runs the engine's thread.

        Raises if the relay reaches no destination or the hypervisor
        refuses the migration; the guest is then untouched.
        """
        s = self.settings
        capabilities = s.all_capabilities()
        capabilities['events'] = True
        if self.disks is not None:
            capabilities['pause-before-switchover'] = True
        self.source.set_capabilities(capabilities)
        extra = ({'multifd_channels': s.multifd_channels}
                 if s.multifd_channels else {})
        if s.warm_up:
            self._probing = True
            self._downtime = HOLD_DOWNTIME_MS
            self.source.set_parameters(max_bandwidth=PROBE_BANDWIDTH,
                                       downtime_limit_ms=HOLD_DOWNTIME_MS,
                                       **extra)
        else:
            # Until the first pass is done: see _step_downtime.
            self._downtime = HOLD_DOWNTIME_MS
            self.source.set_parameters(max_bandwidth=s.bandwidth,
                                       downtime_limit_ms=self._downtime,
                                       **extra)
        self._started = self._clock()
        if self.disks is not None:
            self.disks.start()
        try:
            self.relay.start()
            if self.disks is None:
                self.source.migrate(self.relay.source_uri)
        except Exception:
            self.relay.close()
            if self.disks is not None:
                self.disks.abort('the memory stream did not start')
            raise
        spawn(self._run)

    def switch_over(self):
        """Request the switch-over; a repeated request forces it."""
        with self._lock:
            self._switch_requests += 1
            if self._switch_deadline is None:
                self._switch_deadline = (self._clock() +
                                         self.settings.switch_over_timeout)
        self._wake.set()

    def abort(self):
        """Cancel the outgoing migration; the source guest runs on."""
        if not self._done.is_set():
            if self.disks is not None and not self._disks_settled:
                self._disk_error = self._disk_error or 'aborted'
            self.source.cancel()
        self._wake.set()

    def wait(self, timeout=None):
        """True once the source's migration reached a final state."""
        return self._done.wait(timeout)

    def close(self):
        """Stop the relay; abort first if the migration still runs."""
        if self._closed:
            return
        self._closed = True
        self.abort()
        self.relay.close()
        if self.disks is not None:
            self._done.wait(self.settings.switch_over_timeout)
            self.disks.close()
        self.source.stop_watching()

    def disk_progress(self):
        """``{destination: disk_copy.DiskProgress}``; empty without disks."""
        if self.disks is None:
            return {}
        try:
            return self.disks.progress()
        except Exception as exc:
            LOG.debug('Disk progress of %s: %s', self.source.name, exc)
            return {}

    def status(self):
        """The stream as the compute endpoint reports it."""
        stats = self.stats if (self._done.is_set() or
                               not self._memory_started) else \
            self.source.stats()
        warm_up_state = self.warm_up_state
        destinations = {
            name: {'state': progress.state, 'bytes': progress.bytes_sent,
                   'reason': progress.reason}
            for name, progress in self.relay.progress().items()}
        return {'state': stats.status,
                'holding': self._holding,
                'switch_requested': bool(self._switch_requests),
                'warm_up_ready': (warm_up_state.ready
                                  if warm_up_state is not None else None),
                'memory_total': stats.total,
                'memory_processed': stats.transferred,
                'memory_remaining': stats.remaining,
                'dirty_rate': stats.dirty_rate,
                'transfer_rate': stats.bandwidth,
                'iterations': stats.iterations,
                'throttle_percent': stats.throttle_percent,
                'downtime_limit_ms': self._downtime,
                'error': stats.error or self._timed_out or self._disk_error,
                'timed_out': self._timed_out,
                'destinations': destinations,
                'disks': {name: progress._asdict() for name, progress
                          in self.disk_progress().items()}}

    # -- the engine's thread -----------------------------------------------

    def _on_source_event(self, event):
        if event.first_pass_done:
            self._first_pass_done = True
        if event.kind == hypervisor.EVENT_STOPPED and not self._done.is_set():
            # The stop phase: the last pages go to the leader first.
            try:
                self.relay.prioritize_leader()
            except Exception:
                LOG.exception('The relay of %s could not put its leading '
                              'destination first', self.source.name)
        if event.kind in (hypervisor.EVENT_MIGRATION,
                          hypervisor.EVENT_PASS,
                          hypervisor.EVENT_STOPPED,
                          hypervisor.EVENT_EXITED):
            self._wake.set()

    @property
    def _memory_started(self):
        return self.disks is None or self._memory_migrating

    _memory_migrating = False

    def _run(self):
        try:
            if self.disks is not None and not self._start_memory():
                return
            while True:
                stats = self._sample()
                if (stats.status == vocabulary.QemuStatus.PRE_SWITCHOVER and
                        not self._disks_settled):
                    self._complete_disks()
                    continue
                if stats.status in vocabulary.QemuStatus.FINAL:
                    LOG.info('Outgoing stream of %s ended: %s',
                             self.source.name, stats.status)
                    break
                self._advance()
                self._wake.wait(self._next_wake())
                self._wake.clear()
        except Exception as exc:
            LOG.exception('The outgoing stream of %s failed',
                          self.source.name)
            self._fail(str(exc))
        finally:
            if self.disks is not None and not self._disks_settled:
                self._settle_disks(self._disk_error or
                                   'the memory stream did not complete')
            self._done.set()

    def _fail(self, error, status=vocabulary.QemuStatus.FAILED):
        with self._lock:
            self._stats = hypervisor.MigrationStats(status=status,
                                                    error=error)
        if self.on_progress is not None:
            self._call(self.on_progress, self._stats,
                       self.relay.progress())

    def _start_memory(self):
        """Wait until every disk mirror is in sync, then migrate memory.

        Returns False, the source untouched, if the disk copy failed or
        the stream was aborted first.
        """
        while True:
            if self._disk_error is not None:
                self._fail('aborted while the disks were copied',
                           vocabulary.QemuStatus.CANCELLED)
                return False
            try:
                ready = self.disks.ready()
            except exceptions.MultiDestError as exc:
                self._disk_error = str(exc)
                self._fail(str(exc))
                return False
            if ready:
                break
            if self.on_progress is not None:
                self._call(self.on_progress, self.stats,
                           self.relay.progress())
            self._wake.wait(min(self.settings.sample_interval, 0.1))
            self._wake.clear()
        LOG.info('Every disk mirror of %s is in sync; streaming memory',
                 self.source.name)
        self.source.migrate(self.relay.source_uri)
        self._memory_migrating = True
        return True

    def _complete_disks(self):
        """The guest is paused before the switch-over: end the mirrors."""
        try:
            self.disks.complete()
        except exceptions.MultiDestError as exc:
            LOG.error('The disk copy of %s failed at the switch-over: %s; '
                      'the guest runs on here', self.source.name, exc)
            self._disk_error = str(exc)
            self._settle_disks(str(exc))
            # Cancelling releases QEMU's pause and resumes the guest.
            self.source.cancel()
            return
        self._disks_settled = True
        self.source.continue_migration()

    def _settle_disks(self, reason):
        self._disks_settled = True
        try:
            self.disks.abort(reason)
        except Exception:
            LOG.exception('Aborting the disk copy of %s failed',
                          self.source.name)

    def _next_wake(self):
        """Seconds until the next sample, step or deadline."""
        s = self.settings
        now = self._clock()
        deadlines = []
        with self._lock:
            if not self._forced:
                deadlines.append(self._switch_deadline)
                if s.completion_timeout and self._timed_out is None:
                    deadlines.append(self._started + s.completion_timeout)
                step = s.next_step(now - self._started)
                if step is not None:
                    deadlines.append(self._started + step)
        delay = s.sample_interval
        for deadline in deadlines:
            if deadline is not None:
                delay = min(delay, max(0.0, deadline - now))
        return delay

    def _sample(self):
        stats = self.source.stats()
        progress = self.relay.progress()
        state = None
        if self._monitor is not None:
            samples = {
                name: warmup.DestinationSample(
                    received=p.bytes_sent,
                    live=p.state != vocabulary.StreamState.FAILED)
                for name, p in progress.items()}
            state = self._monitor.update(self._clock(), stats,
                                         self.relay.bytes_from_source,
                                         samples)
        if stats.throttle_percent != self._stats.throttle_percent:
            LOG.info('Auto-converge throttles the vCPUs of %s to %d%%: '
                     'dirty %.0f MB/s, transfer %.0f MB/s, pass %d',
                     self.source.name, stats.throttle_percent,
                     stats.dirty_rate / 1e6, stats.bandwidth / 1e6,
                     stats.iterations)
        with self._lock:
            first_ready = (state is not None and state.ready and
                           (self._warm_up_state is None or
                            not self._warm_up_state.ready))
            self._stats = stats
            if state is not None:
                self._warm_up_state = state
        if first_ready:
            LOG.info('Warm-up exit condition %s reached on %s',
                     self.settings.warm_up_exit,
                     ', '.join(state.ready_destinations))
            if self.on_ready is not None:
                self._call(self.on_ready, state)
        if self._probing and stats.bandwidth > 0:
            # QEMU measured its bandwidth: its threshold is real now.
            self._probing = False
            if self._holding:
                self.source.set_parameters(
                    max_bandwidth=self.settings.bandwidth)
        if self.on_progress is not None:
            self._call(self.on_progress, stats, progress)
        return stats

    def _call(self, callback, *args):
        try:
            callback(*args)
        except Exception:
            LOG.exception('A callback of the stream of %s failed',
                          self.source.name)

    def _ready(self):
        state = self.warm_up_state
        if self._monitor is not None and (state is None or not state.ready):
            return False
        return all(gate() for gate in self._gates)

    def _advance(self):
        """Time out, step the downtime, release or force the switch-over."""
        now = self._clock()
        with self._lock:
            forced = self._forced
        if not forced and self._timed_out is None:
            elapsed = now - self._started
            timeout = self.settings.completion_timeout
            if timeout and elapsed > timeout:
                self._time_out(elapsed)
                return
            self._step_downtime(elapsed)
        with self._lock:
            if self._forced or not self._switch_requests:
                return
            requests = self._switch_requests
            late = now >= self._switch_deadline
        if requests > 1 or late or not self.settings.warm_up:
            self._force('a second request' if requests > 1 else
                        'not done %ss after the request'
                        % self.settings.switch_over_timeout if late else
                        'requested without warm-up')
        elif self._holding and self._ready():
            self._release()

    def _step_downtime(self, elapsed):
        """Apply the configured (stepped) limit once the first pass is done.

        Until the hypervisor says the second pass began, the 1 ms hold
        keeps QEMU from pausing the guest with the rest of its first pass
        still to copy.
        """
        if self._holding or self.settings.warm_up:
            return
        if not self._first_pass_done:
            return
        limit = self.settings.downtime_at(elapsed)
        if limit == self._downtime:
            return
        if self._downtime == HOLD_DOWNTIME_MS:
            LOG.info('First pass of %s done after %.1f s: downtime limit '
                     '%d ms', self.source.name, elapsed, limit)
        else:
            LOG.info('Raising the downtime limit of %s to %d ms after %d s',
                     self.source.name, limit, elapsed)
        self._downtime = limit
        self.source.set_parameters(downtime_limit_ms=limit)

    def _time_out(self, elapsed):
        s = self.settings
        why = ('not complete %d s after it started (completion timeout %d '
               's)' % (elapsed, s.completion_timeout))
        with self._lock:
            self._timed_out = why
        if s.timeout_action == vocabulary.TimeoutAction.FORCE_COMPLETE:
            self._force('%s; timeout action %s' % (why, s.timeout_action))
            return
        LOG.warning('Aborting the migration of %s: %s; timeout action %s. '
                    'The guest runs on here', self.source.name, why,
                    s.timeout_action)
        self.source.cancel()
        self._wake.set()

    def _release(self):
        self._holding = False
        self._probing = False
        LOG.info('Switch-over of %s: downtime limit %d ms', self.source.name,
                 self.settings.downtime_limit_ms)
        self._downtime = self.settings.downtime_limit_ms
        self.source.set_parameters(
            max_bandwidth=self.settings.bandwidth,
            downtime_limit_ms=self.settings.downtime_limit_ms)

    def _force(self, why):
        with self._lock:
            self._forced = True
        self._holding = False
        self._probing = False
        LOG.warning('Forcing the switch-over of %s (%s): the guest pauses '
                    'until the rest is copied', self.source.name, why)
        self._downtime = MAX_DOWNTIME_MS
        self.source.set_parameters(max_bandwidth=self.settings.bandwidth,
                                   downtime_limit_ms=MAX_DOWNTIME_MS)
