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

"""The README's main command, end to end, with real QEMU."""

import io
import sys

import testtools

from nova_multidest.cmd import demo


class DemoTest(testtools.TestCase):

    def test_demo_passes_and_leaves_no_qemu(self):
        out = io.StringIO()
        args = demo.parse_args(['--destinations', '3', '--memory', '64'])
        instance = demo.Demo(args, out=out)
        try:
            status = instance.run()
        finally:
            instance.cleanup()
        text = out.getvalue()
        self.assertEqual(0, status, text)
        self.assertEqual([], instance.failures, text)
        self.assertIn('Winner: dest', text)
        self.assertIn('dest1 was killed mid-stream', text)
        # Every QEMU the demo started is listed there, dead or alive.
        self.assertEqual(4, len(instance.hypervisor.processes))
        self.assertEqual([], [p.pid for p in instance.hypervisor.processes
                              if p.is_alive()])

    def test_bad_arguments_exit_with_usage(self):
        stderr = io.StringIO()
        self.patch(sys, 'stderr', stderr)
        err = self.assertRaises(SystemExit, demo.main, ['--destinations',
                                                        '0'])
        self.assertEqual(2, err.code)
        self.assertIn('--destinations must be at least 1', stderr.getvalue())
