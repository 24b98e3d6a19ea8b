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

"""The destination end of the disk copy.

A destination's stream agent hands each disk stream (``diskstream.py``)
to this writer over a local socket, exactly as it hands the memory
stream to QEMU. The writer replays the records into the NBD export its
paused incoming QEMU serves for that disk, keeping several requests in
flight but never two that touch the same bytes (NBD does not order
them), and declares a disk copied only after the stream's END record,
once every write before it completed and QEMU flushed them.

A destination whose writer failed, or whose streams ended without END,
does not hold the source's disks and must never be elected.
"""

import logging
import os
import shutil
import socket
import tempfile
import threading

from nova_multidest.dataplane import diskstream
from nova_multidest.dataplane import hops
from nova_multidest.dataplane import nbd
from nova_multidest import exceptions
from nova_multidest import vocabulary

LOG = logging.getLogger(__name__)

MAX_IN_FLIGHT = 16
MAX_IN_FLIGHT_BYTES = 64 * 2**20

# Named in vocabulary.py.
WAITING = vocabulary.DiskWriterState.WAITING
RECEIVING = vocabulary.DiskWriterState.RECEIVING
COMPLETE = vocabulary.DiskWriterState.COMPLETE
FAILED = vocabulary.DiskWriterState.FAILED
FINAL_STATES = vocabulary.DiskWriterState.FINAL

_NBD_COMMANDS = {diskstream.WRITE: nbd.CMD_WRITE,
                 diskstream.ZERO: nbd.CMD_WRITE_ZEROES,
                 diskstream.TRIM: nbd.CMD_TRIM}


class DiskWriter(object):
    """Applies one destination's disk streams to its QEMU's exports.

    ``exports`` maps each disk name to ``(path, export_name)``: the unix
    socket of the QEMU NBD server that serves it and its export name.
    ``on_state(state, reason)`` is called on each change of the overall
    state (waiting, receiving, complete, failed).
    """

    def __init__(self, exports, name=None, parent_dir=None, on_state=None):
        if not exports:
            raise exceptions.InvalidSettings(
                reason='a disk writer needs at least one export')
        self.exports = dict(exports)
        self.name = name or 'disks'
        self.on_state = on_state
        self._parent_dir = parent_dir
        self._dir = None
        self._listener = None
        self._threads = hops.ThreadGroup('writer-%s' % self.name)
        self._lock = threading.Condition()
        self._disks = {}
        self._sockets = set()
        self._state = WAITING
        self._reason = None
        self._closed = False
        self.target = None

    # -- public ----------------------------------------------------------

    def start(self):
        """Listen for the agent; return the ``unix:`` target to give it."""
        self._dir = tempfile.mkdtemp(prefix='multidest-disks-',
                                     dir=self._parent_dir)
        path = os.path.join(self._dir, 'disks.sock')
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(len(self.exports) + 1)
        except OSError:
            sock.close()
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self._listener = sock
        self.target = 'unix:%s' % path
        self._threads.start(self._accept_loop)
        return self.target

    @property
    def state(self):
        return self._state

    @property
    def reason(self):
        return self._reason

    def progress(self):
        """Map each disk to the payload bytes its export acknowledged."""
        with self._lock:
            return {name: disk.applied for name, disk in self._disks.items()}

    def wait(self, timeout=None):
        """Wait until every disk is copied or one failed; return the state."""
        with self._lock:
            self._lock.wait_for(lambda: self._state in FINAL_STATES, timeout)
            return self._state

    def fail(self, reason):
        """Give up: this destination will not hold the disks."""
        self._set_state(FAILED, reason)
        self._shutdown_all()

    def close(self):
        # Closed before any agent connected (a port the agent could not
        # take, a destination reverted early) is not worth a warning.
        self._set_state(FAILED, 'disk writer closed before the copy ended',
                        warn=self._state != WAITING)
        with self._lock:
            if self._closed:
                return
            self._closed = True
        hops.shutdown(self._listener)
        self._shutdown_all()
        self._threads.join()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            hops.close_socket(sock)
        hops.close_socket(self._listener)
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    # -- state -----------------------------------------------------------

    def _set_state(self, state, reason=None, warn=True):
        with self._lock:
            if self._state in FINAL_STATES or self._state == state:
                return
            self._state = state
            self._reason = reason
            self._lock.notify_all()
        if state == FAILED:
            (LOG.warning if warn else LOG.info)(
                "Disk writer %s failed: %s", self.name, reason)
        else:
            LOG.info("Disk writer %s is %s", self.name, state)
        if self.on_state is not None:
            try:
                self.on_state(state, reason)
            except Exception:
                LOG.exception("on_state callback of %s failed", self.name)

    def _disk_done(self, disk):
        with self._lock:
            done = (set(self._disks) == set(self.exports) and
                    all(d.complete for d in self._disks.values()))
        LOG.info("Disk writer %s: disk %s copied (%d bytes written)",
                 self.name, disk.name, disk.applied)
        if done:
            self._set_state(COMPLETE)

    def _shutdown_all(self):
        with self._lock:
            sockets = list(self._sockets)
            disks = list(self._disks.values())
        for sock in sockets:
            hops.shutdown(sock)
        for disk in disks:
            disk.stop('the disk writer stopped')

    # -- streams ---------------------------------------------------------

    def _accept_loop(self):
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    hops.close_socket(sock)
                    return
                self._sockets.add(sock)
            self._threads.start(self._receive, sock)

    def _receive(self, sock):
        disk = None
        try:
            disk = self._open_disk(sock)
            self._set_state(RECEIVING)
            disk.apply_stream(sock)
            self._disk_done(disk)
        except (OSError, EOFError, exceptions.NBDError) as exc:
            what = disk.name if disk else 'an unnamed disk'
            self.fail('copy of %s failed: %s' % (what, exc))
        finally:
            if disk is not None:
                disk.close()

    def _open_disk(self, sock):
        header = diskstream.read_header(sock)
        if header is None or header[0] != diskstream.DISK:
            raise exceptions.NBDError(peer='disk stream',
                                      reason='it does not name its disk')
        length = header[3]
        if length > diskstream.MAX_HEADER_PAYLOAD:
            raise exceptions.NBDError(peer='disk stream',
                                      reason='oversized opening record')
        payload = bytearray(length)
        nbd.recv_into(sock, memoryview(payload), 'disk stream')
        name, size = diskstream.parse_disk(payload)
        with self._lock:
            if name not in self.exports:
                raise exceptions.NBDError(
                    peer='disk stream',
                    reason='disk %s is not one this destination prepared '
                           '(%s)' % (name, ', '.join(sorted(self.exports))))
            if name in self._disks:
                raise exceptions.NBDError(
                    peer='disk stream',
                    reason='disk %s arrived twice' % name)
            disk = _Disk(name, on_error=lambda reason: self.fail(
                'copy of %s failed: %s' % (name, reason)))
            self._disks[name] = disk
        path, export = self.exports[name]
        disk.client = nbd.Client.connect(path, export)
        if disk.client.size != size:
            raise exceptions.NBDError(
                peer=disk.client.peer,
                reason='the export has %d bytes, the source disk %d'
                       % (disk.client.size, size))
        disk.start(self._threads)
        return disk


class _Disk(object):
    """One disk's replay: records in, NBD requests out, replies back."""

    def __init__(self, name, on_error):
        self.name = name
        self.on_error = on_error
        self.client = None
        self.applied = 0
        self.complete = False
        self._cond = threading.Condition()
        self._in_flight = {}
        self._in_flight_bytes = 0
        self._next_handle = 1
        self._error = None
        # Set while no reply reader runs.
        self._replies_over = threading.Event()
        self._replies_over.set()

    def start(self, threads):
        self._replies_over.clear()
        threads.start(self._read_replies)

    def apply_stream(self, sock):
        """Replay records until END; raises on a cut stream or an error."""
        while True:
            header = diskstream.read_header(sock)
            if header is None:
                raise EOFError('the stream ended before its end record: '
                               'the source aborted or dropped this '
                               'destination')
            kind, flags, offset, length = header
            if kind == diskstream.END:
                self._barrier()
                self._request(nbd.CMD_FLUSH, 0, 0, 0, None)
                self._barrier()
                self.complete = True
                return
            if kind == diskstream.FLUSH:
                self._barrier()
                self._request(nbd.CMD_FLUSH, 0, 0, 0, None)
                continue
            command = _NBD_COMMANDS.get(kind)
            if command is None:
                raise exceptions.NBDError(
                    peer='disk stream',
                    reason='unexpected %s record' % diskstream.kind_name(kind))
            payload = None
            if kind == diskstream.WRITE:
                if length > nbd.MAX_PAYLOAD:
                    raise exceptions.NBDError(
                        peer='disk stream',
                        reason='write of %d bytes is too large' % length)
                payload = bytearray(length)
                nbd.recv_into(sock, memoryview(payload), 'disk stream')
            self._request(command, offset, length, flags, payload)

    def _request(self, command, offset, length, flags, payload):
        """Send one request once nothing in flight overlaps it."""
        span = (offset, offset + length)
        weight = length if payload is not None else 0
        with self._cond:
            self._cond.wait_for(lambda: self._error or (
                len(self._in_flight) < MAX_IN_FLIGHT and
                self._in_flight_bytes + weight <= MAX_IN_FLIGHT_BYTES and
                not self._overlaps(span, command)))
            self._raise_error()
            handle = self._next_handle
            self._next_handle += 1
            self._in_flight[handle] = (span, weight)
            self._in_flight_bytes += weight
        try:
            self.client.send_request(command, handle, offset, length, flags,
                                     payload)
        except OSError as exc:
            raise exceptions.NBDError(peer=self.client.peer,
                                      reason='send failed: %s' % exc)

    def _overlaps(self, span, command):
        if command == nbd.CMD_FLUSH:
            return False
        start, end = span
        return any(s < end and start < e
                   for (s, e), _ in self._in_flight.values())

    def _barrier(self):
        """Wait until every request sent so far completed."""
        with self._cond:
            self._cond.wait_for(lambda: self._error or not self._in_flight)
            self._raise_error()

    def _raise_error(self):
        if self._error:
            raise exceptions.NBDError(peer=self.client.peer,
                                      reason=self._error)

    def _read_replies(self):
        """Take replies until the connection ends or one reports an error.

        An error fails the whole writer at once: the stream reader may be
        waiting for records that will never come.
        """
        try:
            while True:
                handle, error = self.client.read_reply()
                with self._cond:
                    entry = self._in_flight.pop(handle, None)
                    if entry is None:
                        self._error = 'reply to unknown request %d' % handle
                    elif error:
                        (start, end), _ = entry
                        self._error = ('request at %d+%d failed with errno '
                                       '%d' % (start, end - start, error))
                    else:
                        self._in_flight_bytes -= entry[1]
                        self.applied += entry[1]
                    self._cond.notify_all()
                    error = self._error
                if error:
                    self.on_error(error)
                    return
        except (OSError, exceptions.NBDError) as exc:
            with self._cond:
                lost = not self._error and not self._closing_cleanly()
                if lost:
                    self._error = 'export connection lost: %s' % exc
                self._cond.notify_all()
            if lost:
                self.on_error(self._error)
        finally:
            self._replies_over.set()

    def _closing_cleanly(self):
        return self.complete and not self._in_flight

    def stop(self, reason):
        """Unblock both threads of this disk; a complete copy stays so."""
        with self._cond:
            if not self._error and not self.complete:
                self._error = reason
            self._cond.notify_all()
        if self.client is not None and not self.complete:
            hops.shutdown(self.client.sock)

    def close(self):
        client = self.client
        if client is None:
            return
        if self.complete:
            client.disconnect()
        else:
            hops.close_socket(client.sock)
        self._replies_over.wait(5)
