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

"""Nova loads the driver however Nova and this project are installed.

Operators install both from wheels; devstack and Nova's developers run
Nova from a source tree installed editable, and this project's developers
install it editable too. Each of the four combinations gets a throwaway
venv, and Nova loads ``compute_driver = multidest.MultiDestLibvirtDriver``
through ``nova.virt.driver.load_compute_driver`` there. Editable Nova is
installed from Nova's own sdist, as a source tree would be.

Only Nova and this project are installed into each venv (``--no-deps``):
every dependency comes from the test venv itself, which pins the same
versions, through a folder of links to its site-packages that leaves out
Nova and this project, so that what is imported is what the test
installed.
"""

import fcntl
from importlib import metadata
import os
import subprocess
import sys
import sysconfig
import tarfile
import textwrap

import fixtures

from tests import base
from tests import packaging

NOVA_VERSION = metadata.version('nova')
CACHE = os.path.join(sys.prefix, 'cache', 'multidest-install-tier')
# Entries of the test venv's site-packages the throwaway venvs must not
# see: what the test installs itself, and start-up hooks.
OWN = ('nova', 'nova-', 'nova_multidest', '__editable__', '~')
LOAD = textwrap.dedent('''
    import nova.conf
    from nova.virt import driver, fake
    nova.conf.CONF([], project='nova')
    loaded = driver.load_compute_driver(
        fake.FakeVirtAPI(), 'multidest.MultiDestLibvirtDriver')
    import nova, nova_multidest
    print(type(loaded).__module__ + '.' + type(loaded).__name__)
    print(nova.__file__)
    print(nova_multidest.__file__)
''')


def _pip(python, *args, **kwargs):
    return subprocess.run(
        [sys.executable, '-m', 'pip', '--python', python, '-q',
         '--disable-pip-version-check'] + list(args),
        check=True, capture_output=True, text=True, **kwargs)


def _locked(path):
    lock = open(path + '.lock', 'w')
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def nova_sdist():
    """Nova's sdist, downloaded once (pip's cache, PyPI) and kept."""
    os.makedirs(CACHE, exist_ok=True)
    name = 'nova-%s.tar.gz' % NOVA_VERSION
    path = os.path.join(CACHE, name)
    with _locked(path):
        if not os.path.exists(path):
            # pip builds Nova's metadata to download it (a minute): once.
            subprocess.run(
                [sys.executable, '-m', 'pip', 'download', '-q', '--no-deps',
                 '--no-binary', ':all:', '-d', CACHE,
                 'nova==%s' % NOVA_VERSION],
                check=True, capture_output=True)
    return path


def dependencies_folder():
    """Links to the test venv's site-packages without Nova and us."""
    os.makedirs(CACHE, exist_ok=True)
    path = os.path.join(CACHE, 'dependencies')
    purelib = sysconfig.get_path('purelib')
    with _locked(path):
        os.makedirs(path, exist_ok=True)
        wanted = {n for n in os.listdir(purelib)
                  if not n.startswith(OWN) and not n.endswith('.pth')}
        for name in set(os.listdir(path)) - wanted:
            os.unlink(os.path.join(path, name))
        for name in wanted - set(os.listdir(path)):
            os.symlink(os.path.join(purelib, name), os.path.join(path, name))
    return path


class TestLoadComputeDriver(base.TestCase):

    def setUp(self):
        super().setUp()
        self.work = self.useFixture(
            fixtures.TempDir()).path
        venv = os.path.join(self.work, 'venv')
        subprocess.run([sys.executable, '-m', 'venv', '--without-pip', venv],
                       check=True)
        self.python = os.path.join(venv, 'bin', 'python')
        self.site = subprocess.run(
            [self.python, '-c',
             'import sysconfig; print(sysconfig.get_path("purelib"))'],
            check=True, capture_output=True, text=True).stdout.strip()
        with open(os.path.join(self.site, 'dependencies.pth'), 'w') as pth:
            pth.write(dependencies_folder() + '\n')

    def install_nova(self, editable):
        if not editable:
            _pip(self.python, 'install', '--no-deps', '--no-compile',
                 'nova==%s' % NOVA_VERSION)
            return os.path.join(self.site, 'nova')
        with tarfile.open(nova_sdist()) as sdist:
            sdist.extractall(self.work)
        src = os.path.join(self.work, 'nova-%s' % NOVA_VERSION)
        # Nova's build needs a newer setuptools than the test venv's: it
        # builds in its own isolated environment (pip's cache, PyPI).
        _pip(self.python, 'install', '--no-deps', '--no-compile', '-e', src)
        return os.path.join(src, 'nova')

    def install_multidest(self, editable):
        if not editable:
            _pip(self.python, 'install', '--no-deps', '--no-compile',
                 packaging.build_wheel())
            return os.path.join(self.site, 'nova_multidest')
        src = os.path.join(self.work, 'nova-multidest')
        packaging.copy_tree(src)
        _pip(self.python, 'install', '--no-deps', '--no-compile',
             '--no-build-isolation', '-e', src, env=packaging.BUILD_ENV)
        return os.path.join(src, 'nova_multidest')

    def assert_driver_loads(self, nova_editable, multidest_editable):
        nova_dir = self.install_nova(nova_editable)
        multidest_dir = self.install_multidest(multidest_editable)
        self.assertFalse(os.path.exists(os.path.join(
            self.site, 'nova', 'virt', 'multidest')))
        out = subprocess.run(
            [self.python, '-c', LOAD], check=True, capture_output=True,
            text=True, cwd=self.work,
            env=dict(os.environ, OS_NOVA_DISABLE_EVENTLET_PATCHING='1'))
        driver, nova_file, multidest_file = out.stdout.split()
        self.assertEqual(
            'nova_multidest.compute.driver.MultiDestLibvirtDriver', driver)
        self.assertEqual(os.path.join(nova_dir, '__init__.py'), nova_file)
        self.assertEqual(os.path.join(multidest_dir, '__init__.py'),
                         multidest_file)

    def test_nova_regular_multidest_regular(self):
        self.assert_driver_loads(nova_editable=False,
                                 multidest_editable=False)

    def test_nova_regular_multidest_editable(self):
        self.assert_driver_loads(nova_editable=False,
                                 multidest_editable=True)

    def test_nova_editable_multidest_regular(self):
        self.assert_driver_loads(nova_editable=True,
                                 multidest_editable=False)

    def test_nova_editable_multidest_editable(self):
        self.assert_driver_loads(nova_editable=True,
                                 multidest_editable=True)
