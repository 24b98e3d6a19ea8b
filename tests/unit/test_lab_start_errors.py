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

"""A lab that cannot start says which service failed and where its log is.

Through the lab's own start path (``Process.start``, ``Cloud._wait``,
``check_ports_free``) with real processes and real sockets on loopback.
"""

import socket
import sys

import fixtures
import testtools

from tools.lab import cloud as cloud_mod
from tools.lab import layout


def _listening():
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    sock.listen()
    return sock


class LabStartErrorTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        top = self.useFixture(fixtures.TempDir()).path
        self.cloud = cloud_mod.Cloud(layout.Lab(top, lab_id='unit'))

    def test_port_in_use_names_the_service_and_its_port(self):
        holder = _listening()
        self.addCleanup(holder.close)
        port = holder.getsockname()[1]
        free = _listening()
        free_port = free.getsockname()[1]
        free.close()
        error = self.assertRaises(
            cloud_mod.LabError, cloud_mod.check_ports_free, '127.0.0.1',
            {'keystone': port, 'glance': free_port})
        self.assertIn('cannot start keystone (port %d)' % port, str(error))
        self.assertNotIn('glance', str(error))
        cloud_mod.check_ports_free('127.0.0.1', {'glance': free_port})

    def test_service_that_dies_at_start_names_itself_and_its_log(self):
        holder = _listening()
        self.addCleanup(holder.close)
        process = self.cloud.procs['keystone']
        process.start([sys.executable, '-c',
                       'import socket; socket.socket().bind(("127.0.0.1", '
                       '%d))' % holder.getsockname()[1]])
        error = self.assertRaises(cloud_mod.LabError, self.cloud._wait,
                                  [(process, lambda: False)], 60)
        message = str(error)
        self.assertIn('keystone is not running', message)
        self.assertIn(process.log_path, message)
        self.assertIn('Address already in use', message)
        self.cloud._stop_processes()
        self.assertEqual([], self.cloud.procs.names())
        self.assertFalse(process.alive())

    def test_not_root_is_refused_before_anything_starts(self):
        self.useFixture(fixtures.MockPatch('os.geteuid', return_value=1000))
        error = self.assertRaises(cloud_mod.LabError, self.cloud.up,
                                  log=lambda message: None)
        self.assertIn('the lab needs root', str(error))
        self.assertEqual([], self.cloud.procs.names())

    def test_purge_then_start_again_with_the_same_object(self):
        """What ``bench lab --lab-start`` does: down --purge, then up."""
        old_secrets = dict(self.cloud.secrets)
        self.useFixture(fixtures.MockPatch(
            'tools.lab.network.remove'))
        self.cloud.down(purge=True, log=lambda message: None)
        self.assertEqual([], self.cloud.procs.names())
        process = self.cloud.procs['keystone']
        process.start([sys.executable, '-c', 'pass'])
        self.assertEqual(['keystone'], self.cloud.procs.names())
        self.cloud._stop_processes()
        new_secrets = self.cloud.secrets
        self.assertNotEqual(old_secrets, new_secrets)
        self.assertEqual(new_secrets, cloud_mod.Cloud(
            self.cloud.lab).secrets)
