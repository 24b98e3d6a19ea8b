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

"""Ending mirror jobs waits for QEMU's event, then deletes the targets.

The real QEMU behaviour is in tests/dataplane/test_disks.py; here a QMP
peer that ends a job only when the test says so shows the order of the
commands and that nothing is sent while the job runs.
"""

import socket
import threading

import testtools

from nova_multidest.dataplane import hypervisor
from nova_multidest.dataplane import qmp_disks

JOB = qmp_disks.JOB_PREFIX + 'vda'
TARGET = qmp_disks.TARGET_PREFIX + 'vda'


class FakeQMP(object):
    """A QEMU whose one mirror job ends when ``end_job`` is called."""

    def __init__(self):
        self.commands = []
        self.status = 'running'
        self.cancelled = threading.Event()

    def execute(self, command, **arguments):
        self.commands.append(command)
        if command == 'query-jobs':
            job = {'id': JOB, 'status': self.status,
                   'current-progress': 4, 'total-progress': 8}
            return [job] if self.status != 'gone' else []
        if command == 'block-job-cancel':
            self.cancelled.set()
        if command == 'job-dismiss':
            self.status = 'gone'
        if command == 'query-named-block-nodes':
            return [{'node-name': TARGET}]
        return {}

    def getfd(self, name, fd):
        self.commands.append('getfd')


class TestMirrorCancel(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.qmp = FakeQMP()
        self.mirrors = qmp_disks.Mirrors(self.qmp.execute, self.qmp.getfd,
                                         'source')
        sock, peer = socket.socketpair()
        self.addCleanup(sock.close)
        self.addCleanup(peer.close)
        self.mirrors.start(hypervisor.LocalDisk('vda', 8, True), 'disk-vda',
                           sock)

    def _end_job_later(self, event):
        def end():
            self.qmp.cancelled.wait(10)
            self.qmp.status = 'concluded'
            self.mirrors.job_event(event, {'device': JOB})
        thread = threading.Thread(target=end)
        thread.start()
        self.addCleanup(thread.join)

    def test_cancel_waits_for_the_event_then_deletes_the_target(self):
        self._end_job_later('BLOCK_JOB_CANCELLED')
        self.mirrors.cancel(timeout=30)
        commands = self.qmp.commands
        self.assertEqual('blockdev-del', commands[-1])
        self.assertLess(commands.index('block-job-cancel'),
                        commands.index('job-dismiss'))
        # One look before the event and one after it: no polling.
        self.assertLessEqual(commands.count('query-jobs'), 2)

    def test_an_event_between_the_look_and_the_wait_is_not_lost(self):
        """QEMU ends the job while its state is being read as running."""
        real = self.qmp.execute

        def execute(command, **arguments):
            result = real(command, **arguments)
            if command == 'query-jobs' and self.qmp.cancelled.is_set() and (
                    self.qmp.status == 'running'):
                self.qmp.status = 'concluded'
                self.mirrors.job_event('BLOCK_JOB_CANCELLED',
                                       {'device': 'another-job'})
                self.mirrors.job_event('BLOCK_JOB_CANCELLED',
                                       {'device': JOB})
            return result
        self.mirrors._execute = execute
        # A lost event would hold the cancel for the whole hour.
        self.mirrors.cancel(timeout=3600)
        self.assertEqual('blockdev-del', self.qmp.commands[-1])
        self.assertEqual(hypervisor.MIRROR_FAILED,
                         self.mirrors.states()['vda'].status)
