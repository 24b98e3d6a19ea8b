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

"""Build steps of this project that pbr does not do by itself.

Not installed: setup.cfg's ``[global] commands`` names the class below, and
the build imports it from the source tree (the sdist carries this file).
"""

import os

from setuptools.command import build_py

PTH = 'nova_multidest_loader.pth'
PTH_LINE = ('import nova_multidest.compute.loader as loader; '
            'loader.install()\n')


class BuildPy(build_py.build_py):
    """build_py that also ships ``nova_multidest_loader.pth``.

    The .pth must land in site-packages itself, beside the package, where
    no setup.cfg option puts a file: a wheel's root is site-packages, so
    it goes to the build folder's root; an editable build (PEP 660)
    ignores the build folder and packs what its ``install`` command's
    ``install_lib`` holds, so it goes there. See nova_multidest/compute/
    loader.py for why the .pth exists.
    """

    command_name = 'build_py'

    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False):
            target = self.distribution.get_command_obj('install').install_lib
        else:
            target = self.build_lib
        self.mkpath(target)
        with open(os.path.join(target, PTH), 'w') as pth:
            pth.write(PTH_LINE)

    def get_outputs(self, *args, **kwargs):
        return super().get_outputs(*args, **kwargs) + [
            os.path.join(self.build_lib, PTH)]
