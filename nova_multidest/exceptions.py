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

"""Every exception nova-multidest raises, in one place.

This module imports the standard library only, so the data plane, which
must run without Nova or oslo, can share it. ``code`` is the HTTP status
the API returns when the error reaches a user.
"""


class MultiDestError(Exception):
    """Base class: the message says what happened and what to do."""

    msg_fmt = 'An unknown multi-destination migration error occurred.'
    code = 500

    def __init__(self, message=None, **kwargs):
        self.kwargs = kwargs
        if message is None:
            message = self.msg_fmt % kwargs
        super().__init__(message)

    @property
    def message(self):
        return str(self)

    def format_message(self):
        """Nova records faults and action events from this method."""
        return str(self)


class InvalidSettings(MultiDestError):
    msg_fmt = 'Invalid multi-destination settings: %(reason)s'
    code = 400


class UnsupportedCapability(InvalidSettings):
    msg_fmt = ('Migration capability %(capability)s cannot be used with '
               'several destinations: %(reason)s. Turn it off and retry.')


class AuthenticationFailed(MultiDestError):
    msg_fmt = ('Stream connection from %(peer)s refused: %(reason)s. Check '
               'that both hosts belong to the same migration.')
    code = 403


class DestinationFailed(MultiDestError):
    msg_fmt = 'Destination %(destination)s failed: %(reason)s'


class AllDestinationsFailed(MultiDestError):
    msg_fmt = ('Every destination failed (%(reasons)s); the server keeps '
               'running on its source. Fix what the reasons name, then '
               'migrate it again; on hosts running QEMU without KVM make '
               'that a cold migration, since a live migration after a '
               'failed one can lose guest writes there (README, "Known '
               'issue").')
    code = 409


class SchedulingFailed(MultiDestError):
    msg_fmt = ('The scheduler call failed: %(reason)s. No destination was '
               'chosen and the server stays on its source; check that '
               'nova-scheduler runs, then retry.')


class RecoveryFailed(MultiDestError):
    msg_fmt = ('nova-multidest-conductor could not finish or roll back the '
               'interrupted multi-destination migration: %(reason)s. It '
               'retries at its next start or lease check; if this repeats, '
               'fix the cause named here.')


class RequestNotStarted(MultiDestError):
    msg_fmt = ('No nova-multidest-conductor started this multi-destination '
               'live migration within %(seconds)s seconds (the request was '
               'lost or no conductor runs); it was rolled back and the '
               'server stays on its source. Check that '
               'nova-multidest-conductor is up, then retry.')


class NoConductorListening(MultiDestError):
    msg_fmt = ('No nova-multidest-conductor listens on the message queue '
               '%(topic)s: none runs, or the message broker was restarted '
               'and the conductors have not subscribed again yet (that '
               'takes them a few seconds). Nothing was changed; the server '
               'stays on its source. Check that nova-multidest-conductor '
               'runs and is connected (its log says "Reconnected to AMQP '
               'server"), then retry.')
    code = 503


class GroupNotStarted(MultiDestError):
    msg_fmt = ('nova-multidest-conductor could not start the migration: '
               '%(reason)s. Nothing was changed; the server stays on its '
               'source. Retry once the cause is fixed.')


class SourceStreamFailed(MultiDestError):
    msg_fmt = ('The source %(host)s could not start its migration stream: '
               '%(reason)s. The guest keeps running there; every '
               'destination is reverted.')


class HypervisorError(MultiDestError):
    msg_fmt = 'Hypervisor operation %(operation)s failed: %(reason)s'


class QMPError(HypervisorError):
    msg_fmt = 'QMP command %(command)s failed: %(reason)s'


class NBDError(MultiDestError):
    msg_fmt = ('Disk copy through %(peer)s failed: %(reason)s. The disk '
               'copy to this destination stops; the source disk is '
               'untouched.')


class DiskCopyFailed(MultiDestError):
    msg_fmt = ('The copy of disk %(disk)s failed: %(reason)s. The server '
               'keeps running on its source, whose disks were only read.')


class DiskNotMirrorable(MultiDestError):
    msg_fmt = ('Disk %(disk)s cannot be copied to several destinations: '
               '%(reason)s. Move its data to a volume or to shared storage, '
               'or migrate the server without multi-destination.')
    code = 400


class HostTooOld(MultiDestError):
    msg_fmt = ('Host %(host)s serves nova-multidest compute RPC version '
               '%(version)s; %(purpose)s needs version %(needed)s. Upgrade '
               'nova-multidest on %(host)s, or choose other destinations.')
    code = 409


class InvalidMigrationRequest(MultiDestError):
    msg_fmt = ('Invalid multi-destination live migration request: '
               '%(reason)s')
    code = 400


class InvalidFlavorExtraSpec(InvalidMigrationRequest):
    msg_fmt = ('Flavor %(flavor_name)s (id %(flavor_id)s) of server '
               '%(instance_uuid)s has an invalid extra spec '
               '%(key)s=%(value)s (allowed: %(allowed)s). A server keeps the '
               'extra specs its flavor had at boot or at its last resize: '
               'resize it to a flavor whose multidest extra specs are valid.')


class DestinationUnusable(MultiDestError):
    msg_fmt = ('Destination host %(host)s cannot be used: %(state)s.')
    code = 409


class ConductorStopping(MultiDestError):
    msg_fmt = ('nova-multidest-conductor is stopping; the migration of '
               '%(instance_uuid)s is left to the recovery of the next '
               'conductor start.')
    code = 503


class WinnerUnknown(MultiDestError):
    msg_fmt = ('The elected destination %(host)s of %(instance_uuid)s did '
               'not answer whether its guest runs (%(reason)s). No other '
               'copy will ever be elected; nova-multidest-conductor asks '
               'it again at its next recovery. Bring %(host)s back if it is '
               'down.')


class GroupFenced(ConductorStopping):
    msg_fmt = ('The migration of %(instance_uuid)s was taken over by '
               '%(owner)s (this conductor was thought dead); this conductor '
               'stops driving it and leaves everything to the new owner.')


class CopyMayHaveRun(MultiDestError):
    msg_fmt = ('Refusing to run the copy of instance %(instance_uuid)s on '
               '%(host)s: %(reason)s. Only the durably elected copy may '
               'run; let the conductor finish or roll back the migration.')
    code = 409
