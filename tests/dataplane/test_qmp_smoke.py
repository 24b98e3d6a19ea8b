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

"""Smoke test: a real QEMU (TCG) guest boots and answers QMP."""

import os
import time

import testtools

from nova_multidest.dataplane import guest
from nova_multidest import exceptions
from tests.dataplane import qemu_fixture


def wait_for(predicate, timeout=10.0, interval=0.02):
    """Poll ``predicate`` until true; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class QMPSmokeTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.qemu = self.useFixture(qemu_fixture.QemuFixture())

    def test_guest_runs_and_answers_qmp(self):
        image = guest.DirtyingGuest()
        process = self.qemu.boot(image=image)
        status = process.qmp.execute('query-status')
        self.assertEqual('running', status['status'])

        first = process.read_u32(image.dirty_start)
        regs_before = process.registers()
        self.assertIn('EIP=', regs_before)
        self.assertTrue(wait_for(
            lambda: process.read_u32(image.dirty_start) != first))
        # The guest loops, so one sample may meet the same registers again.
        self.assertTrue(wait_for(
            lambda: process.registers() != regs_before))

        process.qmp.execute('stop')
        self.assertIsNotNone(process.qmp.wait_event('STOP', timeout=10))
        paused = process.read_u32(image.dirty_start)
        self.assertEqual(paused, process.read_u32(image.dirty_start))
        self.assertEqual(process.memory_digest(), process.memory_digest())

    def test_timer_guest_writes_no_changing_hot_page(self):
        # Its interrupt frame is the one page it writes at every tick;
        # under TCG, QEMU 7.2 may not resend such a page (guest.py), so
        # its bytes must never change. 512 pages of 1024 per tick: every
        # other burst ends at the wrap of the sweep, where the last
        # comparison of the loop differs from the one before.
        image = guest.DirtyingGuest(dirty_size=1024 * guest.PAGE,
                                    pages_per_tick=512)
        process = self.qemu.boot(image=image)
        frame = guest.STACK_TOP - 12
        start = process.read_u32(image.dirty_start)
        seen = set()
        for _ in range(64):
            seen.add(process.qmp.hmp('xp /3wx %#x' % frame))
        self.assertNotEqual(start, process.read_u32(image.dirty_start))
        self.assertEqual(1, len(seen), seen)
        self.assertNotIn('0x00000000', seen.pop())

    def test_qmp_error_carries_qemu_text(self):
        process = self.qemu.boot()
        err = self.assertRaises(exceptions.QMPError,
                                process.qmp.execute, 'no-such-command')
        self.assertIn('no-such-command', str(err))

    def test_destroy_removes_process_and_directory(self):
        process = self.qemu.boot()
        process.destroy()
        self.assertFalse(process.is_alive())
        self.assertFalse(os.path.exists(process.dir))
        self.assertRaises(exceptions.QMPError,
                          process.qmp.execute, 'query-status')

    def test_image_too_big_for_ram_rejected_before_start(self):
        bad = guest.DirtyingGuest(dirty_size=1 << 30)
        self.assertRaises(ValueError, self.qemu.boot, image=bad)
        self.assertEqual([], self.qemu.hypervisor.live_processes())
