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

"""What multi-destination migration needs from a hypervisor.

The source-side engine (``source_stream.py``) decides *when* to start,
hold, switch over and force; whoever elects (Nova's conductor through
the compute endpoint, or the demo's ``demo_session.py``) decides which
copy resumes and which are torn down; the classes here say *how* on one
hypervisor. Two implementations exist: raw QEMU processes (``qemu.py``:
the demo, the data-plane tests and the benchmarks) and libvirt domains
inside Nova's compute driver (``virt/hypervisors/libvirt.py``). Keeping
the engine on this interface is what lets the tests here, which run real
QEMU, prove the logic the compute driver runs in production.

Everything is synchronous and thread-safe enough for one engine thread
plus the hypervisor's own event threads: event callbacks are called from
a thread the implementation owns and must return quickly.

Units: bytes, bytes per second, milliseconds for limits, seconds
(``time.time()`` wall clock) for event timestamps, because events of
different processes, possibly on different hosts, are compared.
"""

import abc
import dataclasses
import logging
import threading
import typing

from nova_multidest.dataplane import disk_writer
from nova_multidest.dataplane import relay
from nova_multidest import exceptions
from nova_multidest import vocabulary

LOG = logging.getLogger(__name__)

# QEMU's own defaults for announce-self (qemu-options: -announce): the
# elected copy tells the network where the guest now is.
ANNOUNCE_SELF = {'initial': 50, 'max': 550, 'rounds': 5, 'step': 100}

# GuestEvent kinds.
EVENT_STOPPED = 'stopped'       # the guest's vCPUs stopped
EVENT_RESUMED = 'resumed'       # the guest's vCPUs run again
EVENT_MIGRATION = 'migration'   # migration status changed (see .status)
EVENT_PASS = 'pass'             # another pass over dirty memory began
EVENT_EXITED = 'exited'         # the hypervisor process is gone


@dataclasses.dataclass(frozen=True)
class GuestEvent:
    """Something a guest's hypervisor reported, with when it happened.

    ``timestamp`` is the hypervisor's own time of the event where it gives
    one (QMP does), so that downtime (source STOPPED to winner RESUMED) is
    not inflated by how late our threads see the events. ``iteration``,
    for EVENT_PASS, is the pass that began (QEMU's ``pass``: 1 as the
    migration starts, 2 once the first pass over memory is done).
    """

    guest: str
    kind: str
    timestamp: float
    status: typing.Optional[str] = None
    detail: typing.Optional[str] = None
    iteration: typing.Optional[int] = None

    @property
    def first_pass_done(self):
        """This event says that the first pass over memory is complete."""
        return self.kind == EVENT_PASS and (self.iteration or 0) >= 2


@dataclasses.dataclass(frozen=True)
class MigrationStats:
    """A snapshot of the outgoing migration, as the source sees it.

    The warm-up exit conditions need ``iterations`` (how many dirty-bitmap
    passes started: the first pass over all memory is complete once the
    second one starts), ``remaining`` and ``dirty_rate`` (to estimate the
    downtime a switch-over would cause now). ``transferred`` is what the
    source wrote to the stream; what each destination received is the
    relay's count. ``throttle_percent`` is how much auto-converge slows
    the source's vCPUs down.
    """

    status: str
    transferred: int = 0
    remaining: int = 0
    total: int = 0
    dirty_rate: float = 0.0
    bandwidth: float = 0.0
    iterations: int = 0
    expected_downtime_ms: typing.Optional[int] = None
    downtime_ms: typing.Optional[int] = None
    error: typing.Optional[str] = None
    throttle_percent: int = 0

    @property
    def first_pass_done(self):
        return (self.iterations >= 2 or
                self.status == vocabulary.QemuStatus.COMPLETED)

    @classmethod
    def from_query_migrate(cls, info):
        """Read QMP's query-migrate reply, whoever carried it to us."""
        ram = info.get('ram', {})
        page_size = ram.get('page-size', 4096)
        return cls(
            status=info.get('status', vocabulary.QemuStatus.NONE),
            transferred=ram.get('transferred', 0),
            remaining=ram.get('remaining', 0),
            total=ram.get('total', 0),
            dirty_rate=ram.get('dirty-pages-rate', 0) * page_size,
            bandwidth=ram.get('mbps', 0.0) * 1e6 / 8,
            iterations=ram.get('dirty-sync-count', 0),
            expected_downtime_ms=info.get('expected-downtime'),
            downtime_ms=info.get('downtime'),
            error=info.get('error-desc'),
            throttle_percent=info.get('cpu-throttle-percentage', 0))


# Disk mirror states (MirrorState.status), named in vocabulary.py.
MIRROR_RUNNING = vocabulary.MirrorState.RUNNING
MIRROR_READY = vocabulary.MirrorState.READY
MIRROR_COMPLETED = vocabulary.MirrorState.COMPLETED
MIRROR_FAILED = vocabulary.MirrorState.FAILED


@dataclasses.dataclass(frozen=True)
class LocalDisk:
    """A disk only the source host holds, which the migration copies.

    ``name`` is the guest's target device (``vda``) and the name of the
    disk's stream and NBD export. A ``shallow`` copy sends only what the
    top image holds, because every destination builds its disk over the
    same backing image from its own image cache (Nova's qcow2 backend);
    otherwise the whole disk is copied.
    """

    name: str
    size: int
    shallow: bool = True


@dataclasses.dataclass(frozen=True)
class MirrorState:
    """Where the source's mirror job of one disk stands.

    ``offset`` and ``length`` are the job's own progress counters: bytes
    copied so far out of the bytes known to need copying, which grows
    while the guest writes.
    """

    status: str
    offset: int = 0
    length: int = 0
    error: typing.Optional[str] = None


def qmp_parameters(max_bandwidth=None, downtime_limit_ms=None,
                   multifd_channels=None):
    """``migrate-set-parameters`` arguments; None leaves one unchanged."""
    parameters = {}
    if max_bandwidth is not None:
        parameters['max-bandwidth'] = int(max_bandwidth)
    if downtime_limit_ms is not None:
        parameters['downtime-limit'] = int(downtime_limit_ms)
    if multifd_channels:
        parameters['multifd-channels'] = int(multifd_channels)
    return parameters


def _no_disks(guest, operation):
    return exceptions.HypervisorError(
        operation='%s of %s' % (operation, guest.name),
        reason='this hypervisor does not copy local disks; use shared '
               'storage or volumes')


EventCallback = typing.Callable[[GuestEvent], None]


class Subscribers:
    """The callbacks of one guest's events, for every implementation.

    A failing callback is logged and never stops the others: the election
    listens here, and one broken listener must not hide a completion.
    """

    def __init__(self, name):
        self._name = name
        self._callbacks = []
        self._lock = threading.Lock()

    def add(self, callback: EventCallback) -> None:
        with self._lock:
            self._callbacks.append(callback)

    def emit(self, event: GuestEvent) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(event)
            except Exception:
                LOG.exception('Event callback of %s failed', self._name)


class Guest(abc.ABC):
    """Behaviour both ends share."""

    #: Name used in logs, events, progress and results.
    name: str

    @abc.abstractmethod
    def subscribe(self, callback: EventCallback) -> None:
        """Call ``callback(GuestEvent)`` for every later event.

        Events, not polling, drive the election: the first destination to
        report completion must win even if the engine thread is busy.
        """

    def stop_watching(self) -> None:
        """Drop what ``subscribe`` registered; idempotent.

        A hypervisor may refuse a second watch of the same guest (libvirt
        does), so the next migration of a guest that stays here needs the
        first one's watch gone.
        """

    @abc.abstractmethod
    def is_running(self) -> bool:
        """True if the guest's vCPUs run (not paused, not gone)."""

    @abc.abstractmethod
    def is_alive(self) -> bool:
        """True while the hypervisor process or domain exists."""

    def memory_digest(self) -> str:
        """SHA-256 of guest RAM, to prove two copies are identical.

        Only meaningful while the guest is paused. Optional: used by the
        demo and tests; production implementations may refuse.
        """
        raise NotImplementedError()


class SourceGuest(Guest):
    """The running guest whose state is copied out."""

    @abc.abstractmethod
    def set_capabilities(self, capabilities: typing.Mapping[str, bool]):
        """Set migration capabilities (QEMU names, e.g. ``events``).

        The session has already refused those a one-way stream to several
        destinations cannot carry (``return-path``, ``postcopy-ram``).
        """

    @abc.abstractmethod
    def set_parameters(self, max_bandwidth: typing.Optional[int] = None,
                       downtime_limit_ms: typing.Optional[int] = None,
                       multifd_channels: typing.Optional[int] = None):
        """Set the stream bandwidth cap (bytes/s) and the downtime limit.

        Called again during the migration: the session holds pre-copy
        during warm-up with a tiny downtime limit and sets the real one at
        switch-over, so implementations must apply it to a running job.
        ``multifd_channels`` is only given before ``migrate``.
        """

    @abc.abstractmethod
    def migrate(self, uri: str) -> None:
        """Start the outgoing migration into ``uri`` and return at once.

        ``uri`` is what the relay listens on (``tcp:HOST:PORT``).
        """

    @abc.abstractmethod
    def stats(self) -> MigrationStats:
        """The current migration snapshot."""

    @abc.abstractmethod
    def cancel(self) -> None:
        """Abort the outgoing migration.

        The guest keeps (or resumes) running on the source.
        """

    @abc.abstractmethod
    def resume(self) -> None:
        """Let the source guest run again if it is paused.

        Needed when the source finished sending (it stays paused after a
        'completed' migration) but no destination took over.
        """

    def continue_migration(self) -> None:
        """Go on from QEMU's ``pre-switchover`` pause.

        The engine enables ``pause-before-switchover`` only when it copies
        disks, so only hypervisors that copy disks need this.
        """
        raise _no_disks(self, 'continue the migration')

    def local_disks(self) -> typing.List[LocalDisk]:
        """The disks the migration must copy (none by default)."""
        return []

    def start_disk_mirrors(self, sockets: typing.Mapping[str, typing.Any],
                           disks: typing.Sequence[LocalDisk],
                           max_bandwidth: int = 0) -> None:
        """Mirror each disk into the connected socket given for it.

        ``max_bandwidth`` caps each mirror's background copy (bytes/s, 0
        for none); guest writes are mirrored as they happen regardless.

        The socket leads to the disk relay's NBD export of that disk;
        implementations hand it to the hypervisor (the caller closes its
        own copy afterwards). Guest writes must reach the mirror before
        the guest sees them complete (QEMU's ``write-blocking``), so a
        mirror that is ready stays in sync. The disks themselves are only
        ever read.
        """
        raise _no_disks(self, 'mirror disks')

    def disk_mirrors(self) -> typing.Dict[str, MirrorState]:
        """The state of each disk mirror started, by disk name."""
        return {}

    def complete_disk_mirrors(self, timeout: float) -> None:
        """End every mirror in sync; the guest must be paused already.

        Raises DiskCopyFailed when a mirror cannot end with a complete
        copy. The mirror targets are removed either way.
        """
        raise _no_disks(self, 'complete disk mirrors')

    def cancel_disk_mirrors(self) -> None:
        """Stop every mirror at once, without a complete copy; idempotent.

        Returns once every mirror ended (the hypervisor's event) and its
        target is gone. The guest and its disks go on as if nothing was
        mirrored.
        """


class DestinationGuest(Guest):
    """A paused guest in incoming mode that may become the new home."""

    @property
    @abc.abstractmethod
    def incoming_target(self) -> str:
        """Where this destination's hypervisor accepts the stream.

        ``unix:PATH`` or ``tcp:HOST:PORT``, local to the destination host:
        the destination's stream agent connects there.
        """

    @abc.abstractmethod
    def start_incoming(self, capabilities=None,
                       multifd_channels=0) -> None:
        """Make the destination ready to receive, paused.

        ``capabilities`` are those the source uses that the destination
        must share (e.g. ``multifd``), and ``multifd_channels`` the number
        of multifd channels the source opens. Implementations also enable
        ``events`` and ``late-block-activate``
        (shared disks must stay inactive until this copy is elected) and
        start listening on ``incoming_target``. The guest must stay paused
        after the stream completes: only the elected one ever runs.
        """

    @abc.abstractmethod
    def migration_status(self) -> str:
        """The incoming migration state, a ``vocabulary.QemuStatus``."""

    @abc.abstractmethod
    def resume(self) -> None:
        """Run this copy (it was elected), then announce it on the network.

        Raises HypervisorError if the guest cannot run; the session may
        then elect another completed destination, since this one never ran.
        """

    @abc.abstractmethod
    def destroy(self) -> None:
        """Stop the guest and remove every bit of its partial state.

        Idempotent, and must work whatever state the destination is in
        (receiving, completed, crashed).
        """

    def open_stream(self, secret: bytes, listen=('127.0.0.1', 0)):
        """Start this destination's stream agent; return its address.

        The agent receives the relayed stream and feeds it into
        ``incoming_target``.

        The default runs the agent in this process, which is right when
        the destination runs on this host. A remote implementation starts
        it on the destination host instead. The address is also kept in
        ``stream_address``.
        """
        self._stream_agent = relay.DestinationAgent(
            secret, target=self.incoming_target, listen=listen,
            name=self.name)
        self._stream_agent.start()
        self.stream_address = self._stream_agent.address
        return self.stream_address

    def stream_bytes_received(self) -> int:
        """Bytes the destination's agent received, for progress."""
        agent = getattr(self, '_stream_agent', None)
        return agent.bytes_received if agent is not None else 0

    def close_stream(self) -> None:
        """Stop the agent; the session calls it for winners and losers."""
        agent = getattr(self, '_stream_agent', None)
        if agent is not None:
            agent.close()
        self.close_disk_stream()

    def export_disks(self, disks: typing.Sequence[LocalDisk]):
        """Serve this paused guest's copies of ``disks`` for writing.

        Returns ``{disk name: (unix socket path, NBD export name)}``, local
        to the destination host, for its disk writer.
        """
        raise _no_disks(self, 'export disks')

    def open_disk_stream(self, secret: bytes, exports,
                         listen=('127.0.0.1', 0), tls=None,
                         forward_tls=None):
        """Start the agent and writer that receive the disk streams.

        ``exports`` is what ``export_disks`` returned. Returns the agent's
        address for the disk relay. The default runs both in this
        process; a remote implementation starts them on its host.
        """
        writer = disk_writer.DiskWriter(exports, name=self.name)
        target = writer.start()
        agent = relay.DestinationAgent(
            secret, target=target, listen=listen, tls=tls,
            forward_tls=forward_tls, name='%s-disks' % self.name)
        try:
            agent.start()
        except Exception:
            writer.close()
            raise
        self._disk_writer = writer
        self._disk_agent = agent
        return agent.address

    def disks_copied(self) -> typing.Optional[bool]:
        """Whether this copy holds the source's disks.

        None while the copy runs (or when no disk is copied: see
        ``copies_disks``), True once every disk stream was applied up to
        its end and flushed, False if the copy failed.
        """
        writer = getattr(self, '_disk_writer', None)
        if writer is None or writer.state not in disk_writer.FINAL_STATES:
            return None
        return writer.state == disk_writer.COMPLETE

    @property
    def copies_disks(self) -> bool:
        return getattr(self, '_disk_writer', None) is not None

    def disk_copy_reason(self) -> typing.Optional[str]:
        writer = getattr(self, '_disk_writer', None)
        return writer.reason if writer is not None else None

    def check_disks_copied(self) -> None:
        """Raise HypervisorError unless resuming cannot lose a disk write."""
        if self.copies_disks and not self.disks_copied():
            raise exceptions.HypervisorError(
                operation='resume %s' % self.name,
                reason='its disks are not copied: %s'
                       % (self.disk_copy_reason() or 'the copy is not '
                          'finished'))

    def close_disk_stream(self) -> None:
        for attribute in ('_disk_agent', '_disk_writer'):
            part = getattr(self, attribute, None)
            if part is not None:
                part.close()


class Hypervisor(abc.ABC):
    """Factory of guest handles on one host.

    Implementations are looked up by name in the
    ``nova_multidest.hypervisors`` entry point namespace.
    """

    @abc.abstractmethod
    def source(self, guest) -> SourceGuest:
        """Handle on an existing running guest.

        ``guest`` is implementation-specific: a QEMU guest object, a
        libvirt domain name.
        """

    @abc.abstractmethod
    def create_destination(self, name: str,
                           source: SourceGuest) -> DestinationGuest:
        """Create a paused, not yet listening destination for ``source``.

        ``name`` identifies the destination (a host name in Nova). The new
        guest has the source's machine configuration so that the stream
        loads into it. Call ``start_incoming`` next.
        """

    def close(self) -> None:
        """Release what the factory holds (connections); guests stay."""
