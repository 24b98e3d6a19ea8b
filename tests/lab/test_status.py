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

"""Scenario 12: an operator's upgrade check against the running cloud.

``nova-multidest-status upgrade check`` reads the controller's nova.conf,
Nova's databases and asks every compute over RabbitMQ, as it does in a
real deployment; its exit code is what an upgrade script acts on.
"""

import os
import subprocess

import fixtures

from tests.lab import base

SUCCESS, WARNING = 0, 1


class UpgradeCheckTest(base.LabTestCase):

    def upgrade_check(self, *config_files):
        files = [self.lab.path('etc', 'nova', 'nova.conf')]
        files += config_files
        command = [self.lab.tool('nova-multidest-status')]
        for path in files:
            command += ['--config-file', path]
        return subprocess.run(command + ['upgrade', 'check'],
                              capture_output=True, text=True,
                              timeout=base.CLI_TIMEOUT)

    def test_healthy_cloud_passes(self):
        result = self.upgrade_check()
        self.assertEqual(SUCCESS, result.returncode,
                         result.stdout + result.stderr)
        for host in self.lab.hosts:
            self.assertIn(host.name, result.stdout)

    def test_retry_rounds_on_tcg_hosts_warn(self):
        extra = os.path.join(self.useFixture(
            fixtures.TempDir()).path, 'rounds.conf')
        with open(extra, 'w') as f:
            f.write('[multidest]\nmax_rounds = 2\n')
        result = self.upgrade_check(extra)
        self.assertEqual(WARNING, result.returncode,
                         result.stdout + result.stderr)
        # The hosts answer with their own [libvirt] virt_type (qemu: the
        # lab has no KVM).
        self.assertIn('runs guests under QEMU without KVM', result.stdout)
        for host in self.lab.hosts:
            self.assertIn(host.name, result.stdout)
