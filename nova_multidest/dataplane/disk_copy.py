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

"""The source side of one disk copy: mirror jobs into the disk relay.

It follows libvirt's block migration, with the relay in place of the
one destination: ``start`` mirrors every local disk into the relay;
``ready`` says when every mirror is in sync, after which each guest write
is in every live destination's stream before the guest sees it complete,
so the memory stream may start; ``complete`` ends the mirrors once the
guest is paused for the switch-over (QEMU's ``pre-switchover`` state),
and only then do the streams get the END record that makes a
destination's copy whole. ``abort`` at any point leaves the source and
its disks as they were: they are only ever read.
"""

import collections
import logging

from nova_multidest.dataplane import disk_relay
from nova_multidest.dataplane import hypervisor as hv
from nova_multidest import exceptions

LOG = logging.getLogger(__name__)

COMPLETE_TIMEOUT = 60.0

DiskProgress = collections.namedtuple(
    'DiskProgress', ['total_bytes', 'processed_bytes', 'remaining_bytes'])
DiskProgress.__doc__ = (
    "One destination's disk copy: total_bytes is what the source's mirror "
    "jobs know they must copy (it grows while the guest writes), "
    "processed_bytes what reached that destination's writer.")


class DiskCopy(object):
    """Copies ``disks`` of ``source`` to the disk agents ``destinations``.

    ``destinations`` lists ``(name, (host, port))`` of each destination's
    disk agent (``DestinationGuest.open_disk_stream``). The remaining
    arguments are the relay's (``disk_relay.DiskRelay``).
    """

    def __init__(self, source, disks, destinations, secret, topology='star',
                 lag_limit=256 * 2**20, tls=None, migration_id=None,
                 on_drop=None, max_bandwidth=0):
        self.source = source
        self.disks = list(disks)
        if not self.disks:
            raise exceptions.InvalidSettings(
                reason='a disk copy needs at least one disk')
        self.max_bandwidth = max_bandwidth
        self.relay = disk_relay.DiskRelay(
            secret, destinations, {d.name: d.size for d in self.disks},
            topology=topology, lag_limit=lag_limit, tls=tls,
            migration_id=migration_id, on_drop=on_drop)
        self._started = False

    def start(self):
        """Start one mirror per disk into the relay.

        Raises AllDestinationsFailed if no destination is reachable, or
        the hypervisor's error; nothing is left running then.
        """
        self.relay.start()
        sockets = {}
        try:
            for disk in self.disks:
                sockets[disk.name] = self.relay.take_source_socket(disk.name)
            self.source.start_disk_mirrors(sockets, self.disks,
                                           max_bandwidth=self.max_bandwidth)
        except Exception:
            self.relay.close()
            raise
        finally:
            # QEMU holds its own copy: close ours without a shutdown,
            # which would end the connection for both.
            for sock in sockets.values():
                sock.close()
        self._started = True
        LOG.info("Mirroring disks %s of %s to %s",
                 ', '.join(d.name for d in self.disks), self.source.name,
                 ', '.join(self.relay.live_destinations()))

    def ready(self):
        """True once every mirror is in sync.

        Raises DiskCopyFailed when a mirror failed, AllDestinationsFailed
        when the relay lost every destination.
        """
        if not self.relay.live_destinations():
            raise exceptions.AllDestinationsFailed(
                reasons='every destination failed during the disk copy')
        mirrors = self.source.disk_mirrors()
        for disk in self.disks:
            state = mirrors.get(disk.name)
            if state is not None and state.status == hv.MIRROR_FAILED:
                raise exceptions.DiskCopyFailed(
                    disk=disk.name,
                    reason='its mirror failed: %s' % state.error)
        return all(mirrors.get(d.name) is not None and
                   mirrors[d.name].status == hv.MIRROR_READY
                   for d in self.disks)

    def complete(self, timeout=COMPLETE_TIMEOUT):
        """End the mirrors in sync and the streams; the guest is paused.

        Raises DiskCopyFailed if a disk cannot be completed; the caller
        then aborts the migration, which resumes the source.
        """
        self.source.complete_disk_mirrors(timeout)
        self.relay.finish()

    def progress(self):
        """Map each destination to its DiskProgress."""
        mirrors = self.source.disk_mirrors() if self._started else {}
        total = sum(state.length for state in mirrors.values())
        copied = sum(state.offset for state in mirrors.values())
        result = {}
        for name, prog in self.relay.progress().items():
            reached = max(prog.bytes_delivered, prog.bytes_sent)
            processed = min(copied, reached)
            result[name] = DiskProgress(total, processed, total - processed)
        return result

    def drop(self, name, reason):
        self.relay.drop(name, reason)

    def abort(self, reason):
        """Stop copying; the source and its disks go on untouched.

        The relay goes first: from then on it answers every write of the
        mirrors with an error, so that they end at once whatever the
        destinations do. Cancelling them returns once QEMU reported each
        job ended and their targets are deleted.
        """
        self.relay.abort(reason)
        if self._started:
            try:
                self.source.cancel_disk_mirrors()
            except exceptions.MultiDestError as exc:
                LOG.warning("Cancelling the disk mirrors of %s: %s",
                            self.source.name, exc)

    def close(self):
        self.relay.close()
