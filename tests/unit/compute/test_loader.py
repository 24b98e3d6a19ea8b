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
"""The import hook through which Nova finds the driver."""

import sys

import fixtures

from nova_multidest.compute import loader
from tests import base


class TestDriverModuleFinder(base.TestCase):

    def test_answers_only_for_the_driver_module(self):
        finder = loader.DriverModuleFinder()
        for name in ('nova', 'nova.virt', 'nova.virt.libvirt',
                     'nova.virt.multidest.other', 'nova_multidest'):
            self.assertIsNone(finder.find_spec(name))
        spec = finder.find_spec('nova.virt.multidest')
        self.assertEqual('nova.virt.multidest', spec.name)
        self.assertIsInstance(spec.loader, loader.DriverModuleLoader)

    def test_the_module_re_exports_our_driver(self):
        from nova_multidest.compute import driver
        self.useFixture(fixtures.MonkeyPatch('sys.meta_path',
                                             list(sys.meta_path)))
        self.useFixture(fixtures.MonkeyPatch('sys.modules',
                                             dict(sys.modules)))
        sys.modules.pop('nova.virt.multidest', None)
        loader.install()
        import nova.virt.multidest
        self.assertIs(driver.MultiDestLibvirtDriver,
                      nova.virt.multidest.MultiDestLibvirtDriver)

    def test_install_registers_once(self):
        self.useFixture(fixtures.MonkeyPatch('sys.meta_path',
                                             list(sys.meta_path)))
        loader.install()
        loader.install()
        self.assertEqual(1, sum(
            isinstance(f, loader.DriverModuleFinder) for f in sys.meta_path))
