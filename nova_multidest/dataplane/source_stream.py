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

"""The source side of one multi-destination migration on a compute host.

One outgoing stream from the source guest goes into the relay, which
copies it to every destination agent. This object owns both for the
lifetime of the stream, reports progress, holds pre-copy during warm-up
and releases it at switch-over. Election and the fate of each
destination are the conductor's; the source only ever resumes its guest
when told to, or when QEMU gave up on its own.
"""

import logging
import threading
import time

from nova_multidest.dataplane import hypervisor
from nova_multidest.dataplane import warmup
from nova_multidest import vocabulary

LOG = logging.getLogger(__name__)

MiB = 1 << 20
# During warm-up QEMU must never judge the remaining memory small enough
# to stop the guest: a 1 ms downtime limit keeps it pre-copying.
HOLD_DOWNTIME_MS = 1
# Switch-over asked for again before warm-up is ready forces completion
# whatever the downtime, like Nova's force-complete, without pausing the
# guest ourselves.
FORCE_DOWNTIME_MS = 60000
POLL_INTERVAL = 0.5


class SourceStream(object):
    """Drives ``source`` into ``relay`` in a thread of its own.

    ``on_progress(stats, destinations)`` is called from that thread at
    every poll and once at the end, with the relay's DestinationProgress
    per destination name; it must not raise.

    A warm-up stream pre-copies until a switch-over was requested *and*
    the warm-up exit condition holds (``warm_up_exit`` on
    ``warm_up_percent`` % of the live destinations); a second request
    before that forces the switch-over.
    """

    def __init__(self, source, relay, warm_up=False, downtime_limit_ms=500,
                 max_bandwidth=None, capabilities=None, on_progress=None,
                 poll_interval=POLL_INTERVAL,
                 warm_up_exit=vocabulary.WarmUpExit.COPIED,
                 warm_up_percent=100):
        self.source = source
        self.relay = relay
        self.warm_up = warm_up
        self.downtime_limit_ms = downtime_limit_ms
        self.max_bandwidth = max_bandwidth
        self.capabilities = dict(capabilities or {})
        self.capabilities.setdefault('events', True)
        self.on_progress = on_progress
        self.poll_interval = poll_interval
        self._monitor_warm_up = (
            warmup.WarmUpMonitor(warm_up_exit, warm_up_percent,
                                 downtime_limit_ms) if warm_up else None)
        self._warm_up_state = None
        self._holding = warm_up
        self._switch_requests = 0
        self._wake = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._last_stats = hypervisor.MigrationStats(
            status=vocabulary.QemuStatus.SETUP)
        self._closed = False

    @property
    def holding(self):
        return self._holding

    def start(self, spawn):
        """Start streaming; ``spawn(func)`` runs the monitor thread.

        Raises if the relay reaches no destination or the hypervisor
        refuses the migration; the guest is then untouched.
        """
        self.source.set_capabilities(self.capabilities)
        self.source.set_parameters(
            max_bandwidth=self.max_bandwidth,
            downtime_limit_ms=(HOLD_DOWNTIME_MS if self.warm_up
                               else self.downtime_limit_ms))
        self.relay.start()
        try:
            self.source.migrate(self.relay.source_uri)
        except Exception:
            self.relay.close()
            raise
        spawn(self._monitor)

    def _monitor(self):
        try:
            while True:
                stats = self._poll()
                if stats.status in vocabulary.QemuStatus.FINAL:
                    LOG.info('Outgoing stream of %s ended: %s',
                             self.source.name, stats.status)
                    break
                self._maybe_release()
                self._wake.wait(self.poll_interval)
                self._wake.clear()
        except Exception:
            LOG.exception('Monitoring the stream of %s failed',
                          self.source.name)
        finally:
            self._done.set()

    def _poll(self):
        stats = self.source.stats()
        progress = self.relay.progress()
        with self._lock:
            self._last_stats = stats
        if self._monitor_warm_up is not None:
            samples = {
                name: warmup.DestinationSample(
                    received=p.bytes_sent,
                    live=p.state != vocabulary.StreamState.FAILED)
                for name, p in progress.items()}
            state = self._monitor_warm_up.update(
                time.monotonic(), stats, self.relay.bytes_from_source,
                samples)
            with self._lock:
                self._warm_up_state = state
        if self.on_progress is not None:
            try:
                self.on_progress(stats, progress)
            except Exception:
                LOG.exception('Recording progress of %s failed',
                              self.source.name)
        return stats

    def _maybe_release(self):
        with self._lock:
            if not self._holding or not self._switch_requests:
                return
            ready = (self._warm_up_state is not None and
                     self._warm_up_state.ready)
            if not ready and self._switch_requests < 2:
                return
            self._holding = False
            downtime = (self.downtime_limit_ms if ready
                        else FORCE_DOWNTIME_MS)
        LOG.info('Switch-over of %s: downtime limit %d ms (warm-up %s)',
                 self.source.name, downtime,
                 'ready' if ready else 'forced')
        self.source.set_parameters(downtime_limit_ms=downtime)

    def wait(self, timeout=None):
        """True once the source's migration reached a final state."""
        return self._done.wait(timeout)

    def switch_over(self):
        """Request the switch-over; a repeated request forces it."""
        with self._lock:
            self._switch_requests += 1
            holding = self._holding
        if holding:
            self._maybe_release()
        else:
            LOG.info('Forcing the switch-over of %s', self.source.name)
            self.source.set_parameters(downtime_limit_ms=FORCE_DOWNTIME_MS)
        self._wake.set()

    def abort(self):
        """Cancel the outgoing migration; the source guest keeps running."""
        if not self._done.is_set():
            self.source.cancel()
        self._wake.set()

    def status(self):
        if self._done.is_set():
            with self._lock:
                stats = self._last_stats
        else:
            stats = self.source.stats()
        with self._lock:
            warm_up_state = self._warm_up_state
        destinations = {}
        for name, progress in self.relay.progress().items():
            destinations[name] = {'state': progress.state,
                                  'bytes': progress.bytes_sent,
                                  'reason': progress.reason}
        return {'state': stats.status,
                'holding': self._holding,
                'switch_requested': bool(self._switch_requests),
                'warm_up_ready': (warm_up_state.ready
                                  if warm_up_state is not None else None),
                'memory_total': stats.total,
                'memory_processed': stats.transferred,
                'memory_remaining': stats.remaining,
                'error': stats.error,
                'destinations': destinations}

    def close(self):
        """Stop the relay; abort first if the migration still runs."""
        if self._closed:
            return
        self._closed = True
        self.abort()
        self.relay.close()
