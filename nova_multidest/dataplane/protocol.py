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

"""Wire protocol between the hosts of one multi-destination migration.

Every hop of a migration stream (source relay to destination agent, and
agent to agent in a chain) crosses the network between compute hosts, where
any process could connect to a listening agent or answer in its place. Each
hop therefore starts with a mutual challenge-response proving that both
ends hold the per-migration secret, followed by a small JSON header that the
secret also authenticates. After the handshake the stream travels in frames,
so that a receiver can tell a finished stream from a dead sender.

Handshake (client is the connecting side)::

    client: MAGIC, client nonce
    server: MAGIC, server nonce, HMAC(secret, "server" | nonces)
    client: HMAC(secret, "client" | nonces | header), header length, header
    server: HMAC(secret, "reply" | nonces | reply), reply length, reply

The client checks the server's proof before it sends its header, so a
stray listener learns nothing; the server reads nothing past the header
before the client's proof checks out. The header's ``kind`` is ``stream``
(one channel of the migration stream, in frames), ``status`` (the agent
writes one JSON line per status change), ``drop`` (the source cut this
destination off) or ``gone`` (another destination of the chain, named in
the header, is gone: forward around it).
"""

import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import ssl
import struct

from nova_multidest import exceptions

LOG = logging.getLogger(__name__)

SECRET_BYTES = 32
NONCE_BYTES = 32
MAGIC = b'NMDHOP01'
MAX_HEADER_BYTES = 64 * 1024
HANDSHAKE_TIMEOUT = 10.0

_CLIENT_HELLO = struct.Struct('!8s32s')
_SERVER_HELLO = struct.Struct('!8s32s32s')
_MAC_AND_LENGTH = struct.Struct('!32sI')

# Frames carry the stream after the handshake: a type byte and a length.
# DATA carries stream bytes, END says the source closed the stream cleanly,
# ABORT (with a UTF-8 reason) that it failed.
FRAME_HEADER = struct.Struct('!BI')
FRAME_DATA = 1
FRAME_END = 2
FRAME_ABORT = 4


def new_secret():
    """Return a fresh secret for one migration, shared by all its hosts."""
    return secrets.token_bytes(SECRET_BYTES)


def _mac(secret, label, *parts):
    digest = hmac.new(secret, label, hashlib.sha256)
    for part in parts:
        digest.update(part)
    return digest.digest()


def _peer_name(sock):
    try:
        peer = sock.getpeername()
    except OSError:
        return 'unknown peer'
    if isinstance(peer, tuple):
        return '%s:%s' % peer[:2]
    return str(peer) or 'local socket'


def check_secret(secret):
    if not isinstance(secret, bytes) or len(secret) < 16:
        raise exceptions.InvalidSettings(
            reason='the migration secret must be at least 16 random bytes; '
                   'create one with protocol.new_secret()')


def recv_exact(sock, size):
    """Read exactly ``size`` bytes; EOFError if the peer closes first."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if not n:
            raise EOFError('connection closed after %d of %d bytes'
                           % (got, size))
        got += n
    return bytes(buf)


def _auth_failed(sock, peer, reason):
    sock.close()
    return exceptions.AuthenticationFailed(peer=peer, reason=reason)


def client_handshake(sock, secret, header, timeout=HANDSHAKE_TIMEOUT):
    """Authenticate a connected socket as the connecting side of a hop.

    The server must prove it holds the secret before the header is sent.
    Returns the server's JSON reply. On any failure the socket is closed
    and AuthenticationFailed raised; a well-authenticated refusal raises
    DestinationFailed.
    """
    check_secret(secret)
    peer = _peer_name(sock)
    old_timeout = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        client_nonce = os.urandom(NONCE_BYTES)
        sock.sendall(_CLIENT_HELLO.pack(MAGIC, client_nonce))
        magic, server_nonce, server_mac = _SERVER_HELLO.unpack(
            recv_exact(sock, _SERVER_HELLO.size))
        if magic != MAGIC:
            raise _auth_failed(sock, peer, 'the peer does not speak the '
                                           'multi-destination stream protocol')
        expected = _mac(secret, b'server', client_nonce, server_nonce)
        if not hmac.compare_digest(server_mac, expected):
            raise _auth_failed(sock, peer, 'the peer does not hold the '
                                           'migration secret')
        payload = json.dumps(header, sort_keys=True).encode()
        mac = _mac(secret, b'client', server_nonce, client_nonce, payload)
        sock.sendall(_MAC_AND_LENGTH.pack(mac, len(payload)) + payload)
        reply_mac, length = _MAC_AND_LENGTH.unpack(
            recv_exact(sock, _MAC_AND_LENGTH.size))
        if length > MAX_HEADER_BYTES:
            raise _auth_failed(sock, peer, 'oversized handshake reply')
        reply_bytes = recv_exact(sock, length)
        expected = _mac(secret, b'reply', client_nonce, server_nonce,
                        reply_bytes)
        if not hmac.compare_digest(reply_mac, expected):
            raise _auth_failed(sock, peer, 'the handshake reply is not '
                                           'authenticated by the secret')
        reply = json.loads(reply_bytes)
    except exceptions.AuthenticationFailed:
        raise
    except (OSError, EOFError, ValueError, struct.error) as exc:
        raise _auth_failed(sock, peer, 'handshake failed (%s); is TLS set '
                                       'the same way on both hosts?' % exc)
    sock.settimeout(old_timeout)
    if not reply.get('accepted'):
        sock.close()
        raise exceptions.DestinationFailed(
            destination=peer,
            reason='it refused the stream: %s' % reply.get('reason'))
    return reply


def server_handshake(sock, secret, decide, timeout=HANDSHAKE_TIMEOUT):
    """Authenticate a freshly accepted socket as the listening side.

    ``decide(header)`` returns the dict sent back to the client, or raises
    DestinationFailed to refuse the stream with its message. Returns
    ``(header, reply)``. Nothing past the handshake is read before the
    client proved it holds the secret.
    """
    check_secret(secret)
    peer = _peer_name(sock)
    old_timeout = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        magic, client_nonce = _CLIENT_HELLO.unpack(
            recv_exact(sock, _CLIENT_HELLO.size))
        if magic != MAGIC:
            raise _auth_failed(sock, peer, 'the peer does not speak the '
                                           'multi-destination stream protocol')
        server_nonce = os.urandom(NONCE_BYTES)
        sock.sendall(_SERVER_HELLO.pack(
            MAGIC, server_nonce,
            _mac(secret, b'server', client_nonce, server_nonce)))
        client_mac, length = _MAC_AND_LENGTH.unpack(
            recv_exact(sock, _MAC_AND_LENGTH.size))
        if length > MAX_HEADER_BYTES:
            raise _auth_failed(sock, peer, 'oversized handshake header')
        payload = recv_exact(sock, length)
        expected = _mac(secret, b'client', server_nonce, client_nonce,
                        payload)
        if not hmac.compare_digest(client_mac, expected):
            raise _auth_failed(sock, peer, 'the peer does not hold the '
                                           'migration secret')
        header = json.loads(payload)
        if not isinstance(header, dict):
            raise _auth_failed(sock, peer, 'malformed handshake header')
        try:
            reply = dict(decide(header), accepted=True)
        except exceptions.DestinationFailed as exc:
            reply = {'accepted': False, 'reason': str(exc)}
        reply_bytes = json.dumps(reply, sort_keys=True).encode()
        reply_mac = _mac(secret, b'reply', client_nonce, server_nonce,
                         reply_bytes)
        sock.sendall(_MAC_AND_LENGTH.pack(reply_mac, len(reply_bytes)) +
                     reply_bytes)
    except exceptions.AuthenticationFailed:
        raise
    except (OSError, EOFError, ValueError, struct.error) as exc:
        raise _auth_failed(sock, peer, 'handshake failed (%s); is TLS set '
                                       'the same way on both hosts?' % exc)
    if not reply['accepted']:
        sock.close()
        raise exceptions.DestinationFailed(destination=peer,
                                           reason=reply['reason'])
    sock.settimeout(old_timeout)
    return header, reply


def check_tls(tls, side):
    """Refuse a TLS context that cannot act on ``side`` of a hop."""
    if tls is None:
        return
    if not isinstance(tls, ssl.SSLContext):
        raise exceptions.InvalidSettings(
            reason='tls must be an ssl.SSLContext or None, not %r' % (tls,))
    wrong = (ssl.PROTOCOL_TLS_CLIENT if side == 'server'
             else ssl.PROTOCOL_TLS_SERVER)
    if tls.protocol == wrong:
        raise exceptions.InvalidSettings(
            reason='the TLS context is made for the %s side of a '
                   'connection but is used to %s' % (
                       'client' if side == 'server' else 'server',
                       'accept streams' if side == 'server'
                       else 'open streams'))


def make_tls_contexts(cert_file, key_file, ca_file):
    """Build ``(server_context, client_context)`` for stream hops.

    Both ends present the host certificate and verify the other's against
    ``ca_file``, so TLS authenticates hosts on top of the secret.
    """
    try:
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(cert_file, key_file)
        server.load_verify_locations(ca_file)
        server.verify_mode = ssl.CERT_REQUIRED
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.load_cert_chain(cert_file, key_file)
        client.load_verify_locations(ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise exceptions.InvalidSettings(
            reason='cannot load TLS certificate %s, key %s or CA %s: %s'
                   % (cert_file, key_file, ca_file, exc))
    return server, client


def wrap_server(sock, tls, timeout=HANDSHAKE_TIMEOUT):
    """Wrap an accepted socket in TLS when the hop uses it."""
    if tls is None:
        return sock
    peer = _peer_name(sock)
    sock.settimeout(timeout)
    try:
        wrapped = tls.wrap_socket(sock, server_side=True)
    except (OSError, ssl.SSLError) as exc:
        raise _auth_failed(sock, peer, 'TLS handshake failed: %s' % exc)
    wrapped.settimeout(None)
    return wrapped


def wrap_client(sock, tls, server_hostname, timeout=HANDSHAKE_TIMEOUT):
    """Wrap a connected socket in TLS when the hop uses it."""
    if tls is None:
        return sock
    peer = _peer_name(sock)
    sock.settimeout(timeout)
    try:
        wrapped = tls.wrap_socket(sock, server_hostname=server_hostname)
    except (OSError, ssl.SSLError) as exc:
        raise _auth_failed(sock, peer, 'TLS handshake failed: %s' % exc)
    wrapped.settimeout(None)
    return wrapped


def connect(address, secret, header, tls=None, timeout=HANDSHAKE_TIMEOUT):
    """Open one authenticated hop to the agent at ``(host, port)``.

    Returns ``(socket, reply)``; the socket is blocking.
    """
    host, port = address
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise exceptions.DestinationFailed(
            destination='%s:%s' % (host, port),
            reason='cannot connect: %s' % exc)
    tune_socket(sock)
    sock = wrap_client(sock, tls, host, timeout)
    reply = client_handshake(sock, secret, header, timeout)
    sock.settimeout(None)
    return sock, reply


# Every hop, loopback too, drains slower than QEMU fills: bytes queued in
# large buffers make QEMU overrate the bandwidth, so it pauses the guest
# too early, and the stop phase then waits for every byte queued ahead of
# the last pages (measured: 4 MiB buffers on loopback tripled the downtime
# of a star of three). Near the bandwidth-delay product of a fast LAN, this
# still keeps a link busy.
SOCKET_BUFFER_BYTES = 256 * 2**10
# A host that vanishes (power loss, cable) sends no reset: without these a
# send to it would block until the lag policy or the caller gives up, and
# a status connection would wait for ever.
DEAD_PEER_TIMEOUT = 30
_KEEPALIVE_OPTIONS = (('TCP_KEEPIDLE', 10), ('TCP_KEEPINTVL', 5),
                      ('TCP_KEEPCNT', 4))


def tune_socket(sock, dead_peer_timeout=None):
    """Buffers sized for the path, and detection of hosts that vanished."""
    if dead_peer_timeout is None:
        dead_peer_timeout = DEAD_PEER_TIMEOUT
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        except OSError:
            LOG.debug("Cannot enlarge socket buffer %s", option)
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in _KEEPALIVE_OPTIONS:
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name),
                                min(value, dead_peer_timeout))
        if hasattr(socket, 'TCP_USER_TIMEOUT'):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                            int(dead_peer_timeout * 1000))
    except OSError:
        LOG.debug("Cannot set dead-peer detection on %s", sock)


def send_frame(sock, frame_type, payload=b''):
    """Send one frame without copying the payload when the socket allows."""
    header = FRAME_HEADER.pack(frame_type, len(payload))
    if isinstance(sock, ssl.SSLSocket) or not payload:
        sock.sendall(header)
        if payload:
            sock.sendall(payload)
        return
    sent = sock.sendmsg([header, payload])
    if sent < len(header):
        sock.sendall(header[sent:])
        sent = len(header)
    if sent - len(header) < len(payload):
        sock.sendall(memoryview(payload)[sent - len(header):])


def parse_target(target):
    """Turn ``unix:/path`` or ``tcp:host:port`` into socket arguments.

    Returns ``(family, address)``. These are the URIs QEMU's
    ``migrate-incoming`` and ``migrate`` accept, restricted to sockets.
    """
    if not isinstance(target, str):
        raise exceptions.InvalidSettings(
            reason='stream address %r must be a string' % (target,))
    kind, _, rest = target.partition(':')
    if kind == 'unix' and rest:
        return socket.AF_UNIX, rest
    if kind == 'tcp':
        host, _, port = rest.rpartition(':')
        host = host.strip('[]')
        if host and port.isdigit() and int(port) < 65536:
            family = socket.AF_INET6 if ':' in host else socket.AF_INET
            return family, (host, int(port))
    raise exceptions.InvalidSettings(
        reason='stream address %r is neither unix:PATH nor tcp:HOST:PORT'
               % (target,))
