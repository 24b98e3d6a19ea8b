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

"""Lets Nova import our driver as ``nova.virt.multidest``.

Nova loads ``compute_driver`` only from below ``nova.virt``, a package
this project must never write into: its files belong to Nova, and an
editable install of Nova (devstack's) or of this project has no shared
folder to write into anyway. Instead the package installs
``nova_multidest_loader.pth`` beside itself, which runs ``install()`` at
interpreter start-up: a meta-path finder that answers for the one module
name ``nova.virt.multidest`` and for nothing else, and imports nothing
until Nova asks for that module. It is found wherever Nova and this
project are installed from, regular or editable.
"""

import importlib.abc
import importlib.util
import sys

MODULE = 'nova.virt.multidest'
DRIVER = 'nova_multidest.compute.driver'


class DriverModuleLoader(importlib.abc.Loader):
    """Executes ``nova.virt.multidest`` as the re-export of our driver."""

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        driver = importlib.import_module(DRIVER)
        module.MultiDestLibvirtDriver = driver.MultiDestLibvirtDriver


class DriverModuleFinder(importlib.abc.MetaPathFinder):
    """Finds ``nova.virt.multidest``, and only it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != MODULE:
            return None
        return importlib.util.spec_from_loader(
            fullname, DriverModuleLoader(), origin=DRIVER)


def install():
    """Register the finder once (the .pth may run more than once)."""
    if not any(isinstance(f, DriverModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(DriverModuleFinder())
