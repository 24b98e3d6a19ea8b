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

"""The wheel operators install must never damage Nova.

A wheel that carried anything under ``nova/`` could overwrite Nova's own
files; one without ``nova_multidest_loader.pth`` could not be selected as
``compute_driver``. tests/install/ installs it beside Nova, regular and
editable, and loads the driver.
"""

import zipfile

from tests import base
from tests import packaging


class TestWheelContents(base.TestCase):

    def setUp(self):
        super().setUp()
        with zipfile.ZipFile(packaging.build_wheel()) as whl:
            self.names = set(whl.namelist())

    def test_ships_the_driver_loader_beside_the_package(self):
        self.assertIn('nova_multidest_loader.pth', self.names)
        with zipfile.ZipFile(packaging.build_wheel()) as whl:
            line = whl.read('nova_multidest_loader.pth').decode()
        self.assertEqual(
            'import nova_multidest.compute.loader as loader; '
            'loader.install()\n', line)

    def test_ships_nothing_under_nova(self):
        self.assertEqual([], [n for n in self.names
                              if n.startswith('nova/')])

    def test_ships_no_tests(self):
        self.assertEqual([], [n for n in self.names
                              if n.startswith('tests/')])

    def test_declares_entry_points(self):
        with zipfile.ZipFile(packaging.build_wheel()) as whl:
            name = [n for n in self.names
                    if n.endswith('.dist-info/entry_points.txt')][0]
            text = whl.read(name).decode()
        for namespace in ('oslo.config.opts', 'nova_multidest.hypervisors',
                          'console_scripts'):
            self.assertIn('[%s]' % namespace, text)
