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

"""The words nova-multidest's layers and services share, declared once.

These strings cross process and release boundaries: nova-api, the
conductor and the computes read and write them in Nova's records, RPC
payloads, flavors and the API, and the data plane reports them from
QEMU. Each is declared here only (``tests/unit/test_vocabulary.py``
checks it), and each class is one vocabulary, so that a word meaning two
things (Nova's Migration ``completed``, QEMU's ``completed``) is two
names. Standard library only: every layer, ``dataplane/`` and ``osc/``
included, imports this module.
"""

# The word that marks what nova-multidest adds to Nova: its option group,
# flavor extra specs, system metadata keys and instance action events.
NAMESPACE = 'multidest'

# -- the group's durable record: instance system_metadata --------------------
# conductor/records.py writes these; nova-api and the computes read them.

SYSMETA_PREFIX = NAMESPACE + '_'
# Constant value, so that recovery finds groups with Nova's exact-match
# system_metadata filter.
SYSMETA_ACTIVE = SYSMETA_PREFIX + 'active'
SYSMETA_ACTIVE_VALUE = 'true'
SYSMETA_PHASE = SYSMETA_PREFIX + 'phase'
SYSMETA_ROUND = SYSMETA_PREFIX + 'round'
# Migration uuid of the elected destination, written before it resumes.
SYSMETA_WINNER = SYSMETA_PREFIX + 'winner'
# Written once the elected destination's guest runs: from then on no
# other copy may ever run.
SYSMETA_RESUMED = SYSMETA_PREFIX + 'resumed'
# The conductor host that owns the group, and its generation: a conductor
# that takes a group over (its owner's service is down) bumps the
# generation, and a stale owner stops at its next step. The lease is the
# owner's Nova service heartbeat.
SYSMETA_OWNER = SYSMETA_PREFIX + 'owner'
SYSMETA_GENERATION = SYSMETA_PREFIX + 'generation'
# Consumer uuid of the scheduler's claim while its host is unknown (the
# scheduler call is in flight); recovery drops that claim.
SYSMETA_PENDING_CLAIM = SYSMETA_PREFIX + 'pending_claim'
# One key per volume: the winner's attachment of that volume.
SYSMETA_ATTACHMENT_PREFIX = SYSMETA_PREFIX + 'attachment_'
# The outcome of the last group; the only key that outlives a group.
SYSMETA_LAST_RESULT = SYSMETA_PREFIX + 'last_result'


def group_in_progress(system_metadata):
    """True while a group owns the instance (its conductor may be dead)."""
    return system_metadata.get(SYSMETA_ACTIVE) == SYSMETA_ACTIVE_VALUE


def elected_migration(system_metadata):
    """The Migration uuid of the copy that may run, or None.

    Once a winner is recorded (or has resumed) no other copy, the source
    included, may ever run again.
    """
    if not group_in_progress(system_metadata):
        return None
    return (system_metadata.get(SYSMETA_RESUMED) or
            system_metadata.get(SYSMETA_WINNER) or None)


class GroupPhase(object):
    """``multidest_phase``: where a group stands, for recovery."""

    PREPARING = 'preparing'
    STREAMING = 'streaming'
    FINISHING = 'finishing'
    REVERTING = 'reverting'

    ALL = (PREPARING, STREAMING, FINISHING, REVERTING)


class MigrationStatus(object):
    """``Migration.status`` values, one Migration per destination."""

    ACCEPTED = 'accepted'
    PREPARING = 'preparing'
    RUNNING = 'running'
    COMPLETED = 'completed'
    CANCELLED = 'cancelled'
    FAILED = 'failed'

    # What a group writes.
    IN_PROGRESS = (ACCEPTED, PREPARING, RUNNING)
    FINAL = (COMPLETED, CANCELLED, FAILED)
    # Nova's own: queued by a source compute, and ended by Nova's other
    # operations. After any of NOVA_FINAL Nova holds nothing for the
    # migration.
    QUEUED = 'queued'
    NOVA_FINAL = FINAL + ('error', 'done', 'reverted', 'confirmed')
    # The source compute cannot abort these yet: nothing streams.
    NOT_YET_RUNNING = (ACCEPTED, QUEUED, PREPARING)


class DestinationPhase(object):
    """The step of one destination's life a failure is reported at.

    The conductor names the phase in the destination's reason; the fake
    hypervisor extension injects faults at some of the same phases.
    """

    CHECKS = 'checks'
    CLAIM = 'claim'
    BINDING = 'binding'
    PREPARE = 'prepare'
    STREAM = 'stream'
    # The last bytes arrived but the destination could not load them.
    COMPLETE = 'complete'
    RESUME = 'resume'

    ALL = (CHECKS, CLAIM, BINDING, PREPARE, STREAM, COMPLETE, RESUME)


class WaitOutcome(object):
    """What a destination's ``wait_destination`` RPC answers."""

    COMPLETED = 'completed'
    FAILED = 'failed'
    TIMEOUT = 'timeout'


# -- instance action events --------------------------------------------------

EVENT_LIVE_MIGRATION = NAMESPACE + '_live_migration'
# One per destination, with the reason a loser failed.
EVENT_DESTINATION = NAMESPACE + '_destination_%s'

# -- versioned notifications -------------------------------------------------


class NotificationEvent(object):
    """``event_type`` of the versioned notifications a group emits.

    Nova's convention: ``<object>.<action>[.<phase>]``; the object is ours
    so that listeners never mistake them for Nova's own.
    """

    PREFIX = NAMESPACE + '.live_migration'
    START = PREFIX + '.start'
    DESTINATION = PREFIX + '.destination'
    ELECTED = PREFIX + '.elected'
    END = PREFIX + '.end'
    ERROR = PREFIX + '.error'
    RECOVERY = PREFIX + '.recovery'

    ALL = (START, DESTINATION, ELECTED, END, ERROR, RECOVERY)


class RecoveryAction(object):
    """What the conductor did with a group it settled from the records."""

    FINISH = 'finish'
    ROLLBACK = 'rollback'


# -- the API -----------------------------------------------------------------

# The server action nova-api serves through the paste filter.
SERVER_ACTION = 'os-migrateLive-multi'
# The key of the action's 202 response body.
RESPONSE_KEY = NAMESPACE + '_migration'
# The oldest compute API microversion the action accepts (nova-api), and
# so the one the client sends.
ACTION_MICROVERSION = '2.25'
# What Nova accepts as a host name in its API (nova.api.validation.
# parameter_types.fqdn, which nova-api applies); the client, which has no
# Nova, checks names against the same rule.
HOST_NAME_PATTERN = '^[a-zA-Z0-9-._]*$'
HOST_NAME_MAX_LENGTH = 255

# -- services ----------------------------------------------------------------

CONDUCTOR_BINARY = 'nova-multidest-conductor'
# What the conductor loads with each instance it migrates or recovers.
INSTANCE_ATTRS = ('system_metadata', 'flavor', 'info_cache',
                  'numa_topology', 'pci_requests', 'resources')

# -- flavors and options -----------------------------------------------------

# The most destinations anything may ask for (options, extra specs).
MAX_DESTINATIONS = 16


class Topology(object):
    """How the stream reaches the destinations."""

    # The source sends one copy to each destination.
    STAR = 'star'
    # Each destination forwards the stream to the next.
    CHAIN = 'chain'

    ALL = (STAR, CHAIN)


class WarmUpExit(object):
    """When a warm-up migration may switch over (``dataplane/warmup.py``)."""

    # Every page was sent at least once.
    COPIED = 'copied'
    # The expected downtime is below the limit.
    DOWNTIME = 'downtime'

    ALL = (COPIED, DOWNTIME)


class TimeoutAction(object):
    """What a migration not complete within its completion timeout does.

    Nova's ``[libvirt] live_migration_timeout_action`` values.
    """

    # Cancel the stream: every destination is reverted, the source runs on.
    ABORT = 'abort'
    # Switch over now: the guest pauses until the rest is copied.
    FORCE_COMPLETE = 'force_complete'

    ALL = (ABORT, FORCE_COMPLETE)


EXTRA_SPEC_DESTINATIONS = NAMESPACE + ':destinations'
EXTRA_SPEC_TOPOLOGY = NAMESPACE + ':topology'


EXTRA_SPECS = (EXTRA_SPEC_DESTINATIONS, EXTRA_SPEC_TOPOLOGY)
# Whatever a compute running the multi-destination driver adds to its
# ComputeNode.stats (the version of its endpoint): nova-api refuses a
# named destination without it.
COMPUTE_STATS_KEY = NAMESPACE + '_endpoint'


def invalid_extra_specs(extra_specs, default_count_used=True):
    """(key, value, what is allowed) of each bad ``multidest:`` spec.

    Nova validates extra specs only when they are set, from microversion
    2.86 on (with the rules of ``api/extra_specs.py``); specs set earlier
    or before this package was installed reach nova-api and the conductor
    unchecked. Checked here: the specs a request uses (the destination
    count only when it names neither hosts nor a count), and names that
    are none of ours, most likely a typo of one.
    """
    problems = []
    for key, value in sorted(extra_specs.items()):
        if not key.startswith(NAMESPACE + ':'):
            continue
        if key == EXTRA_SPEC_DESTINATIONS:
            allowed = 'a whole number from 1 to %d' % MAX_DESTINATIONS
            valid = (not default_count_used or
                     _int_in_range(value, 1, MAX_DESTINATIONS))
        elif key == EXTRA_SPEC_TOPOLOGY:
            allowed = ' or '.join(Topology.ALL)
            valid = value in Topology.ALL
        else:
            allowed = 'none: the extra specs of %s are %s' % (
                NAMESPACE, ', '.join(EXTRA_SPECS))
            valid = False
        if not valid:
            problems.append((key, value, allowed))
    return problems


def _int_in_range(value, low, high):
    try:
        return low <= int(value) <= high
    except (TypeError, ValueError):
        return False


def flavor_destination_count(extra_specs, default, maximum):
    """How many destinations a request that names none uses.

    Nova validated the extra spec when it was set
    (``api/extra_specs.py``).
    """
    value = extra_specs.get(EXTRA_SPEC_DESTINATIONS)
    return min(int(value) if value else default, maximum)


def flavor_topology(extra_specs, default):
    """The topology a flavor asks for, else ``default``."""
    return extra_specs.get(EXTRA_SPEC_TOPOLOGY) or default


# -- the data plane ----------------------------------------------------------

class QemuStatus(object):
    """Migration states as QEMU names them (query-migrate, MIGRATION event).

    Both ends report these; the libvirt extension maps libvirt's job
    states onto them.
    """

    NONE = 'none'
    SETUP = 'setup'
    ACTIVE = 'active'
    DEVICE = 'device'
    PRE_SWITCHOVER = 'pre-switchover'
    COMPLETED = 'completed'
    FAILED = 'failed'
    CANCELLING = 'cancelling'
    CANCELLED = 'cancelled'

    FINAL = frozenset((COMPLETED, FAILED, CANCELLED))


class QemuRunState(object):
    """A guest's run state as QEMU's query-status names it."""

    RUNNING = 'running'
    PAUSED = 'paused'
    POSTMIGRATE = 'postmigrate'
    FINISH_MIGRATE = 'finish-migrate'
    PRELAUNCH = 'prelaunch'
    INMIGRATE = 'inmigrate'

    # A source guest stopped by its finished or failed migration.
    PAUSED_AFTER_MIGRATION = (POSTMIGRATE, FINISH_MIGRATE, PAUSED)


class StreamState(object):
    """Where one destination's stream stands, as the relay reports it."""

    CONNECTING = 'connecting'
    STREAMING = 'streaming'
    COMPLETE = 'complete'
    FAILED = 'failed'

    FINAL = (COMPLETE, FAILED)


class MirrorState(object):
    """A disk mirror of the source, as the hypervisors report it."""

    # Copying the disk's allocated data.
    RUNNING = 'running'
    # In sync; every guest write is mirrored.
    READY = 'ready'
    # Ended in sync, target removed.
    COMPLETED = 'completed'
    # Ended without a complete copy.
    FAILED = 'failed'


class MirroredDisk(object):
    """Disks a block migration copies, in libvirt's domain XML words.

    Others (network disks, other formats) cannot be mirrored into the
    disk relay and are refused up front, naming the disk.
    """

    SOURCE_TYPES = ('file', 'block')
    FORMATS = ('qcow2', 'raw')


class DiskWriterState(object):
    """One destination's disk writer (``dataplane/disk_writer.py``)."""

    WAITING = 'waiting'
    RECEIVING = 'receiving'
    COMPLETE = 'complete'
    FAILED = 'failed'

    FINAL = (COMPLETE, FAILED)


class DestinationState(object):
    """One destination in the session engine's progress reports."""

    PREPARING = 'preparing'
    STREAMING = 'streaming'
    COMPLETED = 'completed'
    RUNNING = 'running'
    FAILED = 'failed'
    REMOVED = 'removed'

    # Still in the race, and out of it.
    LIVE = (STREAMING, COMPLETED)
    GONE = (FAILED, REMOVED)
