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

"""This project as pip builds it from a clean tree: its wheel, its source.

Shared by the unit tier (what the wheel carries) and the install tier
(the wheel and an editable install, beside Nova in throwaway venvs).
"""

import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {'.git', '.venv', '.tox', '.stestr', 'build', 'dist',
             '__pycache__', '.bench', '.lab'}
# pbr takes the version from git, which a copied tree has not.
BUILD_ENV = dict(os.environ, PBR_VERSION='0.0.1')

_wheel = None


def copy_tree(dest):
    """The checkout without build output, caches or state: an sdist's."""
    def ignore(folder, names):
        return [n for n in names
                if n in SKIP_DIRS or n.endswith(('.egg-info', '.pyc'))]
    shutil.copytree(REPO, dest, ignore=ignore)


def build_wheel():
    """Build once per test process: a wheel build takes seconds."""
    global _wheel
    if _wheel is None:
        workdir = tempfile.mkdtemp(prefix='multidest-wheel-')
        src = os.path.join(workdir, 'src')
        copy_tree(src)
        subprocess.run(
            [sys.executable, '-m', 'pip', 'wheel', '--no-deps',
             '--no-build-isolation', '-q', '-w', workdir, src],
            check=True, env=BUILD_ENV, capture_output=True)
        shutil.rmtree(src)
        wheels = [f for f in os.listdir(workdir) if f.endswith('.whl')]
        _wheel = os.path.join(workdir, wheels[0])
    return _wheel
