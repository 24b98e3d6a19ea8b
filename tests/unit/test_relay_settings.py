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

"""The relay's settings and link sizing, checked before any byte moves."""

import socket
import ssl

from nova_multidest.dataplane import protocol
from nova_multidest.dataplane import relay
from nova_multidest import exceptions
from tests import base


class TestSettings(base.TestCase):

    def setUp(self):
        super().setUp()
        self.secret = protocol.new_secret()

    def _relay(self, destinations=(('a', ('127.0.0.1', 1)),), **kwargs):
        return relay.StreamRelay(self.secret, list(destinations), **kwargs)

    def assert_invalid(self, message, *args, **kwargs):
        exc = self.assertRaises(exceptions.InvalidSettings, self._relay,
                                *args, **kwargs)
        self.assertIn(message, str(exc))

    def test_no_destination(self):
        self.assert_invalid('at least one destination', [])

    def test_duplicate_name(self):
        self.assert_invalid('destination name listed twice: a',
                            [('a', ('127.0.0.1', 1)),
                             ('a', ('127.0.0.1', 2))])

    def test_duplicate_address(self):
        self.assert_invalid("destination address listed twice",
                            [('a', ('127.0.0.1', 1)),
                             ('b', ('127.0.0.1', 1))])

    def test_malformed_destinations(self):
        self.assert_invalid('list of (name, (host, port))', [('a',)])

    def test_unknown_topology(self):
        self.assert_invalid("unknown topology 'ring'", topology='ring')

    def test_bad_lag_limit(self):
        for lag_limit in (0, -1, 1.5, None):
            self.assert_invalid('lag_limit must be a positive',
                                lag_limit=lag_limit)

    def test_bad_secret(self):
        exc = self.assertRaises(exceptions.InvalidSettings,
                                relay.StreamRelay, b'short',
                                [('a', ('127.0.0.1', 1))])
        self.assertIn('at least 16 random bytes', str(exc))

    def test_bad_listen(self):
        self.assert_invalid('neither unix:PATH nor tcp:HOST:PORT',
                            listen='fd:3')
        self.assert_invalid('unix socket or a loopback address',
                            listen='tcp:0.0.0.0:0')

    def test_server_side_tls_context_for_relay(self):
        self.assert_invalid('made for the server side',
                            tls=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))

    def test_agent_settings(self):
        exc = self.assertRaises(exceptions.InvalidSettings,
                                relay.DestinationAgent, self.secret,
                                'exec:cat')
        self.assertIn('neither unix:PATH nor tcp:HOST:PORT', str(exc))
        exc = self.assertRaises(exceptions.InvalidSettings,
                                relay.DestinationAgent, self.secret,
                                'unix:/x',
                                tls=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        self.assertIn('made for the client side', str(exc))

    def test_unreachable_destinations(self):
        listener = socket.socket()
        listener.bind(('127.0.0.1', 0))
        address = listener.getsockname()
        listener.close()
        stream_relay = self._relay([('gone', address)])
        self.addCleanup(stream_relay.close)
        exc = self.assertRaises(exceptions.AllDestinationsFailed,
                                stream_relay.start)
        self.assertIn('gone: cannot reach its agent', str(exc))

    def test_unknown_destination_to_drop(self):
        stream_relay = self._relay()
        exc = self.assertRaises(exceptions.InvalidSettings,
                                stream_relay.drop, 'b', 'why')
        self.assertIn("no destination named 'b'", str(exc))


class TestBufferSizing(base.TestCase):
    """Small buffers on every hop, loopback too.

    They bound the bytes queued ahead of the last pages at switch-over.
    """

    def test_every_hop_socket_is_small(self):
        unix_a, unix_b = socket.socketpair()
        listener = socket.create_server(('127.0.0.1', 0))
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        for sock in (unix_a, unix_b, listener, client, server):
            self.addCleanup(sock.close)
        for sock in (unix_a, client, server):
            protocol.tune_socket(sock)
            for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                # Linux doubles what it is given, for its bookkeeping.
                self.assertLessEqual(
                    sock.getsockopt(socket.SOL_SOCKET, option),
                    2 * protocol.SOCKET_BUFFER_BYTES, sock)
