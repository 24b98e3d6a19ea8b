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

"""The hop handshake: only holders of the migration secret get through."""

import socket
import threading

import testtools

from nova_multidest.dataplane import protocol
from nova_multidest import exceptions


def accept_anything(header):
    return {'offset': 7}


class HandshakeTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.client, self.server = socket.socketpair()
        self.addCleanup(self.client.close)
        self.addCleanup(self.server.close)
        self.secret = protocol.new_secret()
        self.server_result = {}

    def _serve(self, secret, decide=accept_anything, timeout=5):
        def run():
            try:
                self.server_result['value'] = protocol.server_handshake(
                    self.server, secret, decide, timeout=timeout)
            except Exception as exc:
                self.server_result['error'] = exc
        thread = threading.Thread(target=run)
        thread.start()
        self.addCleanup(thread.join, 10)
        return thread

    def test_new_secret_is_random_and_long(self):
        first, second = protocol.new_secret(), protocol.new_secret()
        self.assertEqual(32, len(first))
        self.assertNotEqual(first, second)

    def test_success_exchanges_header_and_reply(self):
        thread = self._serve(self.secret)
        reply = protocol.client_handshake(
            self.client, self.secret, {'channel': 2, 'chain': []})
        thread.join(10)
        self.assertEqual({'offset': 7, 'accepted': True}, reply)
        header, server_reply = self.server_result['value']
        self.assertEqual({'channel': 2, 'chain': []}, header)
        self.assertEqual(reply, server_reply)
        self.client.sendall(b'x')
        self.assertEqual(b'x', self.server.recv(1))

    def test_client_with_wrong_secret_is_refused(self):
        thread = self._serve(self.secret)
        # A stray client that ignores the server's proof and answers with
        # a MAC made from a guessed secret.
        self.client.sendall(protocol.MAGIC + b'n' * protocol.NONCE_BYTES)
        protocol.recv_exact(self.client, 8 + 32 + 32)
        header = b'{"channel": 0}'
        self.client.sendall(b'm' * 32 + len(header).to_bytes(4, 'big') +
                            header)
        self.assertEqual(b'', self.client.recv(100))
        thread.join(10)
        exc = self.server_result['error']
        self.assertIsInstance(exc, exceptions.AuthenticationFailed)
        self.assertIn('does not hold the migration secret', str(exc))
        self.assertNotIn('value', self.server_result)

    def test_client_with_wrong_secret_gives_up_first(self):
        thread = self._serve(self.secret)
        exc = self.assertRaises(exceptions.AuthenticationFailed,
                                protocol.client_handshake, self.client,
                                protocol.new_secret(), {'channel': 0})
        self.assertIn('does not hold the migration secret', str(exc))
        thread.join(10)
        self.assertIsInstance(self.server_result['error'],
                              exceptions.AuthenticationFailed)

    def test_server_with_wrong_secret_is_refused_by_client(self):
        thread = self._serve(protocol.new_secret())
        exc = self.assertRaises(exceptions.AuthenticationFailed,
                                protocol.client_handshake,
                                self.client, self.secret, {'channel': 0})
        self.assertIn('does not hold the migration secret', str(exc))
        thread.join(10)
        # The header never left the client: the server saw only EOF.
        self.assertIsInstance(self.server_result['error'],
                              exceptions.AuthenticationFailed)
        self.assertEqual(-1, self.client.fileno())

    def test_server_refusal_is_reported(self):
        def refuse(header):
            raise exceptions.DestinationFailed(destination='agent',
                                               reason='channel 0 is busy')
        thread = self._serve(self.secret, decide=refuse)
        exc = self.assertRaises(exceptions.DestinationFailed,
                                protocol.client_handshake,
                                self.client, self.secret, {'channel': 0})
        thread.join(10)
        self.assertIn('channel 0 is busy', str(exc))
        self.assertIsInstance(self.server_result['error'],
                              exceptions.DestinationFailed)

    def test_garbage_is_refused(self):
        thread = self._serve(self.secret)
        self.client.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n' + b'a' * 40)
        thread.join(10)
        exc = self.server_result['error']
        self.assertIsInstance(exc, exceptions.AuthenticationFailed)
        self.assertIn('does not speak', str(exc))

    def test_garbage_from_server_is_refused(self):
        self.server.sendall(b'\0' * 200)
        exc = self.assertRaises(exceptions.AuthenticationFailed,
                                protocol.client_handshake,
                                self.client, self.secret, {})
        self.assertIn('does not speak', str(exc))

    def test_truncated_hello_is_refused(self):
        thread = self._serve(self.secret)
        self.client.sendall(protocol.MAGIC + b'short')
        self.client.shutdown(socket.SHUT_WR)
        thread.join(10)
        exc = self.server_result['error']
        self.assertIsInstance(exc, exceptions.AuthenticationFailed)
        self.assertIn('connection closed', str(exc))

    def test_silent_peer_times_out(self):
        thread = self._serve(self.secret, timeout=0.2)
        thread.join(10)
        exc = self.server_result['error']
        self.assertIsInstance(exc, exceptions.AuthenticationFailed)
        self.assertIn('timed out', str(exc))

    def test_silent_server_times_out(self):
        exc = self.assertRaises(exceptions.AuthenticationFailed,
                                protocol.client_handshake,
                                self.client, self.secret, {}, timeout=0.2)
        self.assertIn('timed out', str(exc))

    def test_short_secret_is_rejected(self):
        self.assertRaises(exceptions.InvalidSettings,
                          protocol.client_handshake, self.client, b'short', {})


class ParseTargetTest(testtools.TestCase):

    def test_unix(self):
        self.assertEqual((socket.AF_UNIX, '/run/x.sock'),
                         protocol.parse_target('unix:/run/x.sock'))

    def test_tcp(self):
        self.assertEqual((socket.AF_INET, ('127.0.0.1', 4444)),
                         protocol.parse_target('tcp:127.0.0.1:4444'))
        self.assertEqual((socket.AF_INET6, ('::1', 4444)),
                         protocol.parse_target('tcp:[::1]:4444'))

    def test_bad(self):
        for target in ('exec:cat', 'tcp:host', 'tcp::99', 'unix:', 42,
                       'tcp:h:70000'):
            self.assertRaises(exceptions.InvalidSettings,
                              protocol.parse_target, target)
