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

"""The part of the NBD protocol the disk copy speaks with QEMU.

QEMU mirrors a disk into an NBD export, and serves an incoming guest's
disks as NBD exports; libvirt's own block migration joins the two
directly. To reach several destinations, the source's mirror job writes
into the disk relay instead, which is an NBD *server* to it, and each
destination's writer is an NBD *client* of its QEMU's export.

Only what those two local peers need is here: the fixed newstyle
handshake with ``NBD_OPT_GO`` (``NBD_OPT_EXPORT_NAME`` for older
clients), simple replies, no structured replies, metadata contexts or
TLS. Both connections stay on one host; hops between hosts go through
``protocol.py``. The protocol is specified in the NBD project's
``doc/proto.md``.
"""

import collections
import socket
import struct

from nova_multidest import exceptions

INIT_MAGIC = b'NBDMAGIC'
OPTION_MAGIC = 0x49484156454F5054    # b'IHAVEOPT'
OPTION_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

# Handshake flags (server) and client flags.
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
CLIENT_FIXED_NEWSTYLE = 1 << 0
CLIENT_NO_ZEROES = 1 << 1

# Options.
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_INFO = 6
OPT_GO = 7

# Option replies; errors have bit 31 set.
REP_ACK = 1
REP_INFO = 3
REP_ERROR_BIT = 1 << 31
REP_ERR_UNSUP = REP_ERROR_BIT | 1
REP_ERR_INVALID = REP_ERROR_BIT | 3
REP_ERR_UNKNOWN = REP_ERROR_BIT | 6

INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3

# Transmission flags.
TRANS_HAS_FLAGS = 1 << 0
TRANS_READ_ONLY = 1 << 1
TRANS_SEND_FLUSH = 1 << 2
TRANS_SEND_FUA = 1 << 3
TRANS_SEND_TRIM = 1 << 5
TRANS_SEND_WRITE_ZEROES = 1 << 6

# Commands and their flags.
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_WRITE_ZEROES = 6
CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_FAST_ZERO = 1 << 4

# errno values as the protocol numbers them (independent of the host).
EPERM = 1
EIO = 5
EINVAL = 22
ENOSPC = 28
ENOTSUP = 95
ESHUTDOWN = 108

# Largest request payload QEMU sends or accepts.
MAX_PAYLOAD = 32 * 2**20
MAX_OPTION_BYTES = 4096
PREFERRED_BLOCK = 4096

_HELLO = struct.Struct('!8sQH')
_CLIENT_FLAGS = struct.Struct('!I')
_OPTION = struct.Struct('!QII')
_OPTION_REPLY = struct.Struct('!QIII')
_EXPORT_REPLY = struct.Struct('!QH')
_INFO_EXPORT = struct.Struct('!HQH')
_INFO_BLOCK_SIZE = struct.Struct('!HIII')
REQUEST = struct.Struct('!IHHQQI')
SIMPLE_REPLY = struct.Struct('!IIQ')

Request = collections.namedtuple(
    'Request', ['command', 'flags', 'handle', 'offset', 'length'])
Request.__doc__ = ("One transmission request; a write's payload follows "
                   "it on the socket and is the reader's to take.")


class ClientGone(Exception):
    """The client ended the connection (NBD_CMD_DISC or NBD_OPT_ABORT)."""


def _recv_exact(sock, size):
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        count = sock.recv_into(view[got:])
        if not count:
            raise EOFError('NBD connection closed after %d of %d bytes'
                           % (got, size))
        got += count
    return buf


def recv_into(sock, view, what='NBD connection'):
    """Fill ``view`` from ``sock``; EOFError if the peer closes first."""
    got = 0
    while got < len(view):
        count = sock.recv_into(view[got:])
        if not count:
            raise EOFError('%s closed inside a payload' % what)
        got += count


def _error(peer, reason):
    return exceptions.NBDError(peer=peer, reason=reason)


# -- server side --------------------------------------------------------

def serve_handshake(sock, export_name, size, flags):
    """Negotiate one export with a connected client, as the server.

    The client gets ``export_name`` (or the default export, ``''``) of
    ``size`` bytes with transmission ``flags``. Returns once transmission
    starts. Raises ClientGone when the client aborts, NBDError when it
    breaks the protocol or asks for another export.
    """
    peer = 'NBD client'
    try:
        sock.sendall(_HELLO.pack(INIT_MAGIC, OPTION_MAGIC,
                                 FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        client_flags, = _CLIENT_FLAGS.unpack(
            _recv_exact(sock, _CLIENT_FLAGS.size))
        if not client_flags & CLIENT_FIXED_NEWSTYLE:
            raise _error(peer, 'the client does not speak fixed newstyle')
        while True:
            magic, option, length = _OPTION.unpack(
                _recv_exact(sock, _OPTION.size))
            if magic != OPTION_MAGIC or length > MAX_OPTION_BYTES:
                raise _error(peer, 'malformed option %d' % option)
            data = bytes(_recv_exact(sock, length))
            if option == OPT_EXPORT_NAME:
                if data.decode('utf-8', 'replace') not in ('', export_name):
                    raise _error(peer, 'unknown export %r' % data)
                reply = _EXPORT_REPLY.pack(size, flags)
                if not client_flags & CLIENT_NO_ZEROES:
                    reply += bytes(124)
                sock.sendall(reply)
                return
            if option == OPT_ABORT:
                _send_option_reply(sock, option, REP_ACK)
                raise ClientGone('the client aborted the handshake')
            if option in (OPT_GO, OPT_INFO):
                if _serve_info(sock, option, data, export_name, size, flags):
                    return
                continue
            _send_option_reply(sock, option, REP_ERR_UNSUP)
    except (EOFError, OSError) as exc:
        raise _error(peer, 'handshake failed: %s' % exc)


def _serve_info(sock, option, data, export_name, size, flags):
    """Answer NBD_OPT_INFO or NBD_OPT_GO; True when transmission starts."""
    try:
        name_length, = struct.unpack_from('!I', data)
        name = data[4:4 + name_length].decode('utf-8')
        count, = struct.unpack_from('!H', data, 4 + name_length)
        requests = struct.unpack_from('!%dH' % count, data,
                                      6 + name_length)
    except (struct.error, UnicodeDecodeError):
        _send_option_reply(sock, option, REP_ERR_INVALID)
        return False
    if name not in ('', export_name):
        _send_option_reply(sock, option, REP_ERR_UNKNOWN,
                           b'no such export')
        return False
    _send_option_reply(sock, option, REP_INFO,
                       _INFO_EXPORT.pack(INFO_EXPORT, size, flags))
    if INFO_BLOCK_SIZE in requests:
        _send_option_reply(sock, option, REP_INFO, _INFO_BLOCK_SIZE.pack(
            INFO_BLOCK_SIZE, 1, PREFERRED_BLOCK, MAX_PAYLOAD))
    _send_option_reply(sock, option, REP_ACK)
    return option == OPT_GO


def _send_option_reply(sock, option, reply_type, data=b''):
    sock.sendall(_OPTION_REPLY.pack(OPTION_REPLY_MAGIC, option, reply_type,
                                    len(data)) + data)


def read_request(sock):
    """The next request's header; a write's payload is still to be read.

    Raises ClientGone on NBD_CMD_DISC, EOFError when the connection
    closed without it, NBDError on a malformed request.
    """
    magic, flags, command, handle, offset, length = REQUEST.unpack(
        _recv_exact(sock, REQUEST.size))
    if magic != REQUEST_MAGIC:
        raise _error('NBD client', 'bad request magic %#x' % magic)
    if command == CMD_DISC:
        raise ClientGone('the client disconnected')
    if command == CMD_WRITE and length > MAX_PAYLOAD:
        raise _error('NBD client', 'write of %d bytes exceeds the %d '
                                   'advertised' % (length, MAX_PAYLOAD))
    return Request(command, flags, handle, offset, length)


def send_reply(sock, handle, error=0):
    sock.sendall(SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, handle))


# -- client side --------------------------------------------------------

class Client(object):
    """One negotiated connection to an NBD export, as the client.

    Requests and replies are separate calls so that the caller can keep
    several requests in flight; a thread may send while another reads.
    Replies must be simple: the client never asks for structured ones.
    """

    def __init__(self, sock, export_name, peer=None):
        self.sock = sock
        self.export_name = export_name
        self.peer = peer or 'NBD export %s' % export_name
        self.size = None
        self.flags = 0
        self._handshake()

    @classmethod
    def connect(cls, path, export_name, timeout=10.0):
        """Connect to a server listening on the unix socket ``path``."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            client = cls(sock, export_name,
                         peer='NBD export %s at %s' % (export_name, path))
        except (OSError, exceptions.NBDError) as exc:
            sock.close()
            if isinstance(exc, exceptions.NBDError):
                raise
            raise _error('NBD export %s at %s' % (export_name, path),
                         'cannot connect: %s' % exc)
        sock.settimeout(None)
        return client

    def _handshake(self):
        try:
            magic, option_magic, flags = _HELLO.unpack(
                _recv_exact(self.sock, _HELLO.size))
            if magic != INIT_MAGIC or option_magic != OPTION_MAGIC:
                raise _error(self.peer, 'not a newstyle NBD server')
            if not flags & FLAG_FIXED_NEWSTYLE:
                raise _error(self.peer, 'the server does not speak fixed '
                                        'newstyle')
            client_flags = CLIENT_FIXED_NEWSTYLE
            if flags & FLAG_NO_ZEROES:
                client_flags |= CLIENT_NO_ZEROES
            self.sock.sendall(_CLIENT_FLAGS.pack(client_flags))
            name = self.export_name.encode()
            payload = struct.pack('!I', len(name)) + name + struct.pack(
                '!H', 0)
            self.sock.sendall(_OPTION.pack(OPTION_MAGIC, OPT_GO,
                                           len(payload)) + payload)
            while True:
                magic, option, reply_type, length = _OPTION_REPLY.unpack(
                    _recv_exact(self.sock, _OPTION_REPLY.size))
                if magic != OPTION_REPLY_MAGIC or length > MAX_OPTION_BYTES:
                    raise _error(self.peer, 'malformed option reply')
                data = bytes(_recv_exact(self.sock, length))
                if reply_type == REP_ACK:
                    break
                if reply_type & REP_ERROR_BIT:
                    raise _error(self.peer, 'export refused (%#x): %s' % (
                        reply_type, data.decode('utf-8', 'replace')))
                if reply_type == REP_INFO and len(data) >= 2:
                    info, = struct.unpack_from('!H', data)
                    if info == INFO_EXPORT:
                        _, self.size, self.flags = _INFO_EXPORT.unpack(data)
        except (EOFError, OSError, struct.error) as exc:
            raise _error(self.peer, 'handshake failed: %s' % exc)
        if self.size is None:
            raise _error(self.peer, 'the server did not give the export '
                                    'size')

    def send_request(self, command, handle, offset=0, length=0, flags=0,
                     payload=None):
        """Send one request (and a write's payload); never waits a reply."""
        header = REQUEST.pack(REQUEST_MAGIC, flags, command, handle, offset,
                              length)
        if payload is None:
            self.sock.sendall(header)
            return
        sent = self.sock.sendmsg([header, payload])
        if sent < len(header):
            self.sock.sendall(header[sent:])
            sent = len(header)
        if sent - len(header) < len(payload):
            self.sock.sendall(memoryview(payload)[sent - len(header):])

    def read_reply(self, payload=None):
        """Wait for the next reply; return ``(handle, error)``.

        A successful read's data is read into ``payload``, which the
        caller sized for the request the handle names: simple replies do
        not say their length.
        """
        try:
            magic, error, handle = SIMPLE_REPLY.unpack(
                _recv_exact(self.sock, SIMPLE_REPLY.size))
        except EOFError as exc:
            raise _error(self.peer, str(exc))
        if magic != SIMPLE_REPLY_MAGIC:
            raise _error(self.peer, 'bad reply magic %#x (structured '
                                    'replies are not negotiated)' % magic)
        if payload is not None and not error:
            recv_into(self.sock, memoryview(payload))
        return handle, error

    def read(self, offset, length):
        """Read a range synchronously (nothing else may be in flight)."""
        data = bytearray(length)
        self.send_request(CMD_READ, 0, offset, length)
        _, error = self.read_reply(data)
        if error:
            raise _error(self.peer, 'read of %d bytes at %d failed with '
                                    'errno %d' % (length, offset, error))
        return bytes(data)

    def disconnect(self):
        """Say goodbye and close; errors mean the server is gone anyway."""
        try:
            self.send_request(CMD_DISC, 0)
        except OSError:
            pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
