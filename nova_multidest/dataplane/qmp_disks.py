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

"""The QMP side of a disk copy, whatever carries the commands.

QEMU processes of the demo and tests are reached through our own QMP
client, libvirt domains through libvirt's monitor passthrough; both
mirror and export disks with the same commands, so the commands live
here once. ``execute(command, **arguments)`` runs one QMP command and
``getfd(name, fd)`` hands QEMU a file descriptor.

Mirror jobs are created with ``auto-dismiss: false`` and read with
``query-jobs``, which keeps a finished job and its error until it is
dismissed, and libvirt, which does not know these jobs, leaves them
alone. Ending a job is awaited on QEMU's own BLOCK_JOB_COMPLETED or
BLOCK_JOB_CANCELLED event, which the guest passes to ``job_event``: its
target node can be deleted only once the job let it go.
"""

import logging
import os
import socket
import threading
import time

from nova_multidest.dataplane import hypervisor as hv
from nova_multidest import exceptions

LOG = logging.getLogger(__name__)

POLL_INTERVAL = 0.01
CANCEL_TIMEOUT = 30.0
JOB_END_EVENTS = ('BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED')
JOB_PREFIX = 'multidest-mirror-'
TARGET_PREFIX = 'multidest-target-'
EXPORT_PREFIX = 'multidest-export-'
NBD_FD_NAME = 'multidest-nbd'
_FINAL = (hv.MIRROR_COMPLETED, hv.MIRROR_FAILED)


class Mirrors(object):
    """The mirror jobs of one source guest, one per copied disk."""

    def __init__(self, execute, getfd, guest_name):
        self._execute = execute
        self._getfd = getfd
        self._guest_name = guest_name
        self._disks = []
        self._final = {}
        self._ended = threading.Condition()
        self._end_events = 0

    def start(self, disk, node, sock, max_bandwidth=0):
        """Mirror ``disk`` (format node ``node``) into the connected ``sock``.

        A shallow disk copies its top image only (``sync: top``); writes
        are mirrored as the guest makes them (``write-blocking``).
        """
        fdname = 'multidest-disk-%s' % disk.name
        target = TARGET_PREFIX + disk.name
        self._getfd(fdname, sock.fileno())
        self._disks.append(disk.name)
        try:
            self._execute('blockdev-add', **{
                'driver': 'nbd', 'node-name': target, 'export': disk.name,
                'server': {'type': 'fd', 'str': fdname}})
        except exceptions.QMPError:
            self._execute('closefd', fdname=fdname)
            raise
        self._execute('blockdev-mirror', **{
            'job-id': JOB_PREFIX + disk.name, 'device': node,
            'target': target, 'sync': 'top' if disk.shallow else 'full',
            'copy-mode': 'write-blocking', 'speed': int(max_bandwidth),
            'auto-dismiss': False})

    def job_event(self, name, data):
        """Take one QEMU event; called from the guest's event thread."""
        job = (data or {}).get('device') or ''
        if name in JOB_END_EVENTS and job.startswith(JOB_PREFIX):
            with self._ended:
                self._end_events += 1
                self._ended.notify_all()

    def states(self):
        """``{disk: MirrorState}`` of every mirror started."""
        if not self._disks:
            return {}
        jobs = {job['id']: job for job in self._execute('query-jobs')}
        result = {}
        for name in self._disks:
            if name in self._final:
                result[name] = self._final[name]
                continue
            job = jobs.get(JOB_PREFIX + name)
            if job is None:
                state = hv.MirrorState(hv.MIRROR_FAILED,
                                       error='the mirror job vanished')
            else:
                state = _state(job)
            if state.status in _FINAL:
                self._final[name] = state
                self._dismiss(name, job)
            result[name] = state
        return result

    def _dismiss(self, name, job):
        if job is not None and job['status'] == 'concluded':
            try:
                self._execute('job-dismiss', id=JOB_PREFIX + name)
            except exceptions.QMPError as exc:
                LOG.debug('Dismissing the mirror of %s: %s', name, exc)

    def complete(self, timeout):
        """End every mirror in sync (the guest is paused); see SourceGuest."""
        for name in self._disks:
            if name not in self._final:
                self._cancel_job(name, force=False)
        states = self._wait_final(timeout)
        self._remove_targets()
        for name in self._disks:
            state = states.get(name)
            if state is None or state.status != hv.MIRROR_COMPLETED:
                raise exceptions.DiskCopyFailed(disk=name, reason=(
                    'its mirror ended as %s: %s' % (state.status,
                                                    state.error)
                    if state and state.status in _FINAL
                    else 'its mirror did not end in %ss' % timeout))

    def cancel(self, timeout=CANCEL_TIMEOUT):
        """Stop every mirror without a complete copy; idempotent.

        Waits for each job's end event, then deletes the targets.
        """
        if not self._disks:
            return
        for name in self._disks:
            if name not in self._final:
                self._cancel_job(name, force=True)
        states = self._wait_final(timeout)
        if _unfinished(states):
            LOG.error('The mirrors of %s on %s did not stop in %ss',
                      ', '.join(_unfinished(states)), self._guest_name,
                      timeout)
        self._remove_targets()

    def _cancel_job(self, name, force):
        try:
            self._execute('block-job-cancel', device=JOB_PREFIX + name,
                          force=force)
        except exceptions.QMPError as exc:
            # Already concluded, or never created: states() says which.
            LOG.info('Ending the mirror of %s on %s: %s', name,
                     self._guest_name, exc)

    def _wait_final(self, timeout):
        """Every state once each job ended, or as they are at ``timeout``.

        Reads the jobs again after each end event QEMU sends, and once
        more at the deadline (an event lost with its connection must not
        leave a finished job unseen).
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._ended:
                seen = self._end_events
            states = self.states()
            if not _unfinished(states):
                return states
            with self._ended:
                if not self._ended.wait_for(
                        lambda: self._end_events > seen,
                        deadline - time.monotonic()):
                    return self.states()

    def _remove_targets(self):
        present = {node.get('node-name') for node in
                   self._execute('query-named-block-nodes')}
        for name in self._disks:
            if TARGET_PREFIX + name in present:
                self._execute('blockdev-del',
                              **{'node-name': TARGET_PREFIX + name})


def _unfinished(states):
    return sorted(name for name, state in states.items()
                  if state.status not in _FINAL)


def _state(job):
    """A MirrorState from one ``query-jobs`` entry.

    A mirror that was in sync and was cancelled without force concludes
    without error: that is the complete copy. Cancelling one that was not
    in sync yet concludes with an error, like any failure.
    """
    status = job['status']
    offset = job.get('current-progress', 0)
    length = job.get('total-progress', 0)
    if status == 'concluded' or job.get('error'):
        error = job.get('error')
        if not error and offset != length:
            error = 'it ended at %d of %d bytes' % (offset, length)
        return hv.MirrorState(hv.MIRROR_FAILED if error
                              else hv.MIRROR_COMPLETED,
                              offset, length, error)
    if status == 'ready':
        return hv.MirrorState(hv.MIRROR_READY, offset, length)
    return hv.MirrorState(hv.MIRROR_RUNNING, offset, length)


class MirroringSource(object):
    """A source guest's disk mirrors, for every hypervisor that speaks QMP.

    Mixed in before ``hypervisor.SourceGuest``; the guest provides
    ``_mirror_commands()`` (``execute`` and ``getfd`` as ``Mirrors`` takes
    them), ``_disk_nodes(disks)`` (disk name to QEMU format node),
    ``_watch_jobs()`` (start passing QEMU's events to ``_on_job_event``)
    and ``is_alive()``.
    """

    _mirror_jobs = None

    @property
    def _mirrors(self):
        if self._mirror_jobs is None:
            execute, getfd = self._mirror_commands()
            self._mirror_jobs = Mirrors(execute, getfd, self.name)
        return self._mirror_jobs

    def _on_job_event(self, name, data):
        if self._mirror_jobs is not None:
            self._mirror_jobs.job_event(name, data)

    def start_disk_mirrors(self, sockets, disks, max_bandwidth=0):
        self._watch_jobs()
        nodes = self._disk_nodes(disks)
        try:
            for disk in disks:
                self._mirrors.start(disk, nodes[disk.name],
                                    sockets[disk.name], max_bandwidth)
        except Exception:
            self.cancel_disk_mirrors()
            raise

    def disk_mirrors(self):
        return self._mirrors.states()

    def complete_disk_mirrors(self, timeout):
        self._mirrors.complete(timeout)

    def cancel_disk_mirrors(self):
        if self.is_alive():
            self._mirrors.cancel()


class Exports(object):
    """NBD exports of a paused destination's disks, for its writer.

    QEMU serves them on a socket in ``directory`` that this process binds
    and hands over with ``getfd``, so QEMU never opens a path itself.
    """

    def __init__(self, execute, getfd, directory):
        self._execute = execute
        self._getfd = getfd
        self.path = os.path.join(directory, 'nbd.sock')
        self._exports = []
        self._serving = False

    @property
    def serving(self):
        return self._serving

    def start(self, nodes, writable=True):
        """Serve each disk of ``nodes`` (``{export name: format node}``).

        Returns ``{export name: (socket path, export name)}``.
        """
        if not self._serving:
            self._serve()
        exports = {}
        for name, node in nodes.items():
            self._execute('block-export-add', type='nbd', writable=writable,
                          id=EXPORT_PREFIX + name, name=name,
                          **{'node-name': node})
            self._exports.append(name)
            exports[name] = (self.path, name)
        return exports

    def remove(self, name, timeout=CANCEL_TIMEOUT):
        """Stop serving one export and wait until QEMU let it go."""
        self._execute('block-export-del', id=EXPORT_PREFIX + name)
        self._exports.remove(name)
        self._wait_gone({EXPORT_PREFIX + name}, timeout)

    def _wait_gone(self, ids, timeout):
        deadline = time.monotonic() + timeout
        while any(export['id'] in ids
                  for export in self._execute('query-block-exports')):
            if time.monotonic() > deadline:
                raise exceptions.HypervisorError(
                    operation='stop the disk exports %s' % ', '.join(ids),
                    reason='they are still in use after %ss' % timeout)
            time.sleep(POLL_INTERVAL)

    def _serve(self):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.path)
            listener.listen(8)
            self._getfd(NBD_FD_NAME, listener.fileno())
            self._execute('nbd-server-start', addr={
                'type': 'fd', 'data': {'str': NBD_FD_NAME}})
        finally:
            listener.close()
        self._serving = True

    def stop(self, timeout=CANCEL_TIMEOUT):
        """Stop serving; the guest may run only after this."""
        if not self._exports and not self._serving:
            return
        for name in self._exports:
            self._execute('block-export-del', id=EXPORT_PREFIX + name)
        self._wait_gone({EXPORT_PREFIX + name for name in self._exports},
                        timeout)
        self._exports = []
        if self._serving:
            self._execute('nbd-server-stop')
            self._serving = False
