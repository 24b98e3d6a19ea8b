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

"""Shaped networks of killed runs do not outlive the next run.

A run killed by SIGKILL (a timeout of the tier, an operator) never
reaches its clean-up; the next one removes what it left, and only that.
"""

import subprocess
import sys

from benchmarks import dataplane
from tests import base


def namespaces():
    listing = subprocess.run(['ip', 'netns', 'list'], check=True,
                             capture_output=True, text=True).stdout
    return {line.split(' ', 1)[0] for line in listing.splitlines()}


class TestStaleNamespaces(base.TestCase):

    def add_namespace(self, name):
        subprocess.run(['ip', 'netns', 'add', name], check=True)
        self.addCleanup(subprocess.run, ['ip', 'netns', 'del', name],
                        capture_output=True)

    def test_only_namespaces_of_dead_runs_are_removed(self):
        dead = subprocess.Popen([sys.executable, '-c', 'pass'])
        dead.wait()
        alive = subprocess.Popen([sys.executable, '-c',
                                  'import time; time.sleep(600)'])
        self.addCleanup(alive.wait)
        self.addCleanup(alive.kill)
        prefix = dataplane.ShapedNetwork.PREFIX
        left = ['%s%d-sw' % (prefix, dead.pid),
                '%s%d-source' % (prefix, dead.pid)]
        running = '%s%d-sw' % (prefix, alive.pid)
        for name in left + [running]:
            self.add_namespace(name)

        removed = dataplane.ShapedNetwork.remove_stale()

        # Other killed runs' namespaces may go too; a live run's never.
        self.assertEqual(set(left), set(left) & set(removed))
        self.assertNotIn(running, removed)
        remaining = namespaces()
        self.assertIn(running, remaining)
        for name in left:
            self.assertNotIn(name, remaining)
