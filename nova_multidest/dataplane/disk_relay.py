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

"""Copy the source's local disks to several destinations at once.

libvirt's block migration runs one QEMU mirror job per disk into the
destination QEMU's NBD export. QEMU allows one mirror job per source
disk, so to reach N destinations the source mirrors each disk once into
this relay. The relay serves every disk as an NBD export on a socket pair
whose other end is handed to QEMU (no path or port of the host is opened
to QEMU), turns each write into a record of that disk's stream
(``diskstream.py``) and gives the streams to a ``StreamRelay``, which
carries them to every destination exactly like the memory stream: star
or chain, the same authenticated hops and TLS, the same lag limit and
drop rules. On each destination a ``DiskWriter`` (``disk_writer.py``)
replays the records into its QEMU's export.

A write is acknowledged to QEMU once it is in the stream, not once every
destination applied it: the slowest destination must never hold the
guest back. A destination holds the disks only when its writer applied
its whole stream up to the END record, which the relay writes only after
the source's mirror jobs completed in sync (``finish``). With ``copy-mode:
write-blocking`` every guest write is in the stream before the guest
sees it complete, so when the jobs complete with the guest paused, every
stream holds every write.
"""

import collections
import logging
import socket
import threading

from nova_multidest.dataplane import diskstream
from nova_multidest.dataplane import hops
from nova_multidest.dataplane import nbd
from nova_multidest.dataplane import protocol
from nova_multidest.dataplane import relay
from nova_multidest import exceptions

LOG = logging.getLogger(__name__)

EXPORT_FLAGS = (nbd.TRANS_HAS_FLAGS | nbd.TRANS_SEND_FLUSH |
                nbd.TRANS_SEND_FUA | nbd.TRANS_SEND_TRIM |
                nbd.TRANS_SEND_WRITE_ZEROES)
# Flags a destination's export honours the same way the source meant them.
_FORWARDED_FLAGS = nbd.CMD_FLAG_FUA | nbd.CMD_FLAG_NO_HOLE
_RECORD_KINDS = {nbd.CMD_WRITE: diskstream.WRITE,
                 nbd.CMD_WRITE_ZEROES: diskstream.ZERO,
                 nbd.CMD_TRIM: diskstream.TRIM,
                 nbd.CMD_FLUSH: diskstream.FLUSH}
COPY_BUFFER_BYTES = 2**20
FINISH_TIMEOUT = 30.0


class DiskRelay(object):
    """Serves the source's mirror jobs and streams their writes to N hosts.

    ``disks`` maps each disk's name (the NBD export name, e.g. ``vda``)
    to its size in bytes. ``destinations`` and the other arguments are
    those of ``StreamRelay``: each destination's address is that of the
    stream agent which feeds its ``DiskWriter``.
    """

    def __init__(self, secret, destinations, disks, topology='star',
                 lag_limit=256 * 2**20, tls=None, migration_id=None,
                 on_drop=None, connect_timeout=protocol.HANDSHAKE_TIMEOUT,
                 stall_timeout=relay.STALL_TIMEOUT):
        self.disks = self._check_disks(disks)
        self._relay = relay.StreamRelay(
            secret, destinations, topology=topology, lag_limit=lag_limit,
            tls=tls, migration_id=migration_id, on_drop=on_drop,
            connect_timeout=connect_timeout, stall_timeout=stall_timeout)
        self.migration_id = self._relay.migration_id
        self._threads = hops.ThreadGroup('disks-%s' % self.migration_id[:8])
        self._lock = threading.Condition()
        self._channels = collections.OrderedDict()
        self._closed = False

    @staticmethod
    def _check_disks(disks):
        try:
            checked = collections.OrderedDict(
                (str(name), int(size)) for name, size in dict(disks).items())
        except (TypeError, ValueError):
            raise exceptions.InvalidSettings(
                reason='disks must map disk names to sizes in bytes')
        if not checked:
            raise exceptions.InvalidSettings(
                reason='a disk relay needs at least one disk')
        for name, size in checked.items():
            if not name or size <= 0:
                raise exceptions.InvalidSettings(
                    reason='disk %r needs a name and a positive size, not '
                           '%r' % (name, size))
        return checked

    # -- public ----------------------------------------------------------

    def start(self):
        """Reach every destination, then serve one export per disk.

        Raises AllDestinationsFailed if no destination could be reached.
        """
        self._relay.start()
        try:
            for name, size in self.disks.items():
                self._open_channel(name, size)
        except Exception:
            self.close()
            raise
        LOG.info("Disk relay %s serves %s to %s", self.migration_id,
                 ', '.join(self.disks), ', '.join(self.live_destinations()))

    def take_source_socket(self, disk):
        """The socket QEMU's mirror target connects through, handed over.

        The caller passes it to QEMU (``getfd``) and then closes its own
        copy, so that the relay sees QEMU's end of the connection.
        """
        with self._lock:
            channel = self._channels[disk]
            sock, channel.qemu_socket = channel.qemu_socket, None
        if sock is None:
            raise exceptions.InvalidSettings(
                reason='the source socket of disk %s was already taken'
                       % disk)
        return sock

    def finish(self, timeout=FINISH_TIMEOUT):
        """End every disk stream: the source's copy is complete.

        Call only after QEMU reported every mirror job completed in sync
        and removed its target, which disconnects from the relay. The END
        record then tells each destination that its copy is whole.
        Raises DiskCopyFailed if a disk's export did not end cleanly.
        """
        with self._lock:
            channels = list(self._channels.values())
            ended = self._lock.wait_for(
                lambda: all(c.ended is not None for c in channels), timeout)
        for channel in channels:
            if not ended and channel.ended is None:
                reason = 'its mirror did not disconnect in %ss' % timeout
            elif channel.ended != 'disconnected':
                reason = channel.ended
            elif channel.broken:
                reason = channel.broken
            else:
                continue
            raise exceptions.DiskCopyFailed(disk=channel.name, reason=reason)
        for channel in channels:
            try:
                channel.stream.sendall(diskstream.record(diskstream.END))
                channel.stream.shutdown(socket.SHUT_WR)
            except OSError as exc:
                raise exceptions.DiskCopyFailed(
                    disk=channel.name,
                    reason='its stream broke at the end: %s' % exc)
        LOG.info("Disk relay %s: every disk copied, streams ended",
                 self.migration_id)

    def live_destinations(self):
        return self._relay.live_destinations()

    def progress(self):
        """Each destination's ``relay.DestinationProgress`` of disk bytes."""
        return self._relay.progress()

    @property
    def bytes_from_source(self):
        """Disk bytes the source's mirror jobs wrote (record payloads)."""
        with self._lock:
            return sum(c.written for c in self._channels.values())

    def wait_finished(self, timeout=None):
        """Wait until every destination's agent delivered or failed."""
        return self._relay.wait_finished(timeout)

    def drop(self, name, reason):
        """Cut one destination off; the others keep receiving."""
        self._relay.drop(name, reason)

    def abort(self, reason):
        """Fail every destination and every mirror job: no disk is copied.

        The source's disks are only ever read, so they stay as they are.
        QEMU's connections stay open and every write on them is answered
        with an error until QEMU disconnects (its mirror ended and its
        target was deleted) or ``close``: cut under it, QEMU 7.2's NBD
        client waits forever for room to send a write the relay never
        read, and its mirror job can neither fail nor be cancelled.
        """
        self._relay.abort(reason)
        with self._lock:
            channels = list(self._channels.values())
        for channel in channels:
            channel.broken = channel.broken or reason
            hops.shutdown(channel.stream)

    def close(self):
        with self._lock:
            if self._closed:
                return
            self._closed = True
            channels = list(self._channels.values())
        for channel in channels:
            hops.shutdown(channel.sock)
            hops.shutdown(channel.stream)
        self._threads.join()
        for channel in channels:
            for sock in (channel.sock, channel.stream, channel.qemu_socket):
                hops.close_socket(sock)
        self._relay.close()

    # -- one disk --------------------------------------------------------

    def _open_channel(self, name, size):
        family, address = protocol.parse_target(self._relay.source_uri)
        stream = socket.socket(family, socket.SOCK_STREAM)
        try:
            stream.connect(address)
            stream.sendall(diskstream.disk_record(name, size))
        except OSError as exc:
            stream.close()
            raise exceptions.DiskCopyFailed(
                disk=name, reason='cannot open its stream: %s' % exc)
        qemu_end, ours = socket.socketpair()
        channel = _DiskChannel(name, size, ours, stream, qemu_end)
        with self._lock:
            self._channels[name] = channel
        self._threads.start(self._serve, channel)

    def _serve(self, channel):
        try:
            nbd.serve_handshake(channel.sock, channel.name, channel.size,
                                EXPORT_FLAGS)
            LOG.debug("Disk relay %s: mirror of %s connected",
                      self.migration_id, channel.name)
            while True:
                request = nbd.read_request(channel.sock)
                error = channel.forward(request)
                nbd.send_reply(channel.sock, request.handle, error)
        except nbd.ClientGone:
            ended = 'disconnected'
        except (OSError, EOFError, exceptions.NBDError) as exc:
            ended = 'the source mirror connection failed: %s' % exc
            LOG.warning("Disk relay %s: %s of %s", self.migration_id, ended,
                        channel.name)
        with self._lock:
            channel.ended = ended
            self._lock.notify_all()


class _DiskChannel(object):
    """One disk: QEMU's NBD connection in, one disk stream out."""

    def __init__(self, name, size, sock, stream, qemu_socket):
        self.name = name
        self.size = size
        self.sock = sock
        self.stream = stream
        self.qemu_socket = qemu_socket
        self.written = 0
        self.ended = None
        self.broken = None
        self._buffer = bytearray(COPY_BUFFER_BYTES)

    def forward(self, request):
        """Put one request into the stream; return the NBD error number.

        A write's payload is always read off the connection, even when it
        cannot be forwarded, so the next request is read in step.
        """
        kind = _RECORD_KINDS.get(request.command)
        in_range = (request.offset + request.length <= self.size)
        if kind is None or not in_range:
            if request.command == nbd.CMD_WRITE:
                self._copy(None, request.length)
            LOG.warning("Disk %s: refusing NBD command %d at %d+%d",
                        self.name, request.command, request.offset,
                        request.length)
            return nbd.EINVAL
        if kind == diskstream.FLUSH:
            header = diskstream.record(kind)
        else:
            header = diskstream.record(kind, request.offset, request.length,
                                       request.flags & _FORWARDED_FLAGS)
        self._send(header)
        if kind == diskstream.WRITE:
            self._copy(self.stream, request.length)
            self.written += request.length
        return nbd.EIO if self.broken else 0

    def _send(self, data):
        if self.broken:
            return
        try:
            self.stream.sendall(data)
        except OSError as exc:
            self.broken = 'its stream to the destinations broke: %s' % exc

    def _copy(self, stream, length):
        view = memoryview(self._buffer)
        while length:
            chunk = view[:min(length, len(view))]
            nbd.recv_into(self.sock, chunk)
            if stream is not None:
                self._send(chunk)
            length -= len(chunk)
