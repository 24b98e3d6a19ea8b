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

A wheel that carried ``nova/__init__.py`` or ``nova/virt/__init__.py``
would overwrite Nova's own files; one without ``nova/virt/multidest/``
could not be selected as ``compute_driver``.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import zipfile

import fixtures
import testtools

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SKIP_DIRS = {'.git', '.venv', '.tox', '.stestr', 'build', 'dist',
             '__pycache__', '.bench', '.lab'}


def _copy_tree(dest):
    def ignore(folder, names):
        return [n for n in names
                if n in SKIP_DIRS or n.endswith(('.egg-info', '.pyc'))]
    shutil.copytree(REPO, dest, ignore=ignore)


class WheelFixtureMixin(object):

    _wheel = None

    @classmethod
    def build_wheel(cls):
        """Build once per test process: a wheel build takes seconds."""
        if WheelFixtureMixin._wheel is None:
            workdir = tempfile.mkdtemp(prefix='multidest-wheel-')
            src = os.path.join(workdir, 'src')
            _copy_tree(src)
            env = dict(os.environ, PBR_VERSION='0.0.1')
            subprocess.run(
                [sys.executable, '-m', 'pip', 'wheel', '--no-deps',
                 '--no-build-isolation', '-q', '-w', workdir, src],
                check=True, env=env, capture_output=True)
            shutil.rmtree(src)
            wheels = [f for f in os.listdir(workdir) if f.endswith('.whl')]
            WheelFixtureMixin._wheel = os.path.join(workdir, wheels[0])
        return WheelFixtureMixin._wheel


class TestWheelContents(WheelFixtureMixin, testtools.TestCase):

    def setUp(self):
        super().setUp()
        with zipfile.ZipFile(self.build_wheel()) as whl:
            self.names = set(whl.namelist())

    def test_ships_the_compute_driver_shim(self):
        self.assertIn('nova/virt/multidest/__init__.py', self.names)

    def test_never_ships_nova_own_package_files(self):
        self.assertNotIn('nova/__init__.py', self.names)
        self.assertNotIn('nova/virt/__init__.py', self.names)
        foreign = [n for n in self.names if n.startswith('nova/')
                   and not n.startswith('nova/virt/multidest/')]
        self.assertEqual([], foreign)

    def test_ships_no_tests(self):
        self.assertEqual([], [n for n in self.names
                              if n.startswith('tests/')])

    def test_declares_entry_points(self):
        with zipfile.ZipFile(self.build_wheel()) as whl:
            name = [n for n in self.names
                    if n.endswith('.dist-info/entry_points.txt')][0]
            text = whl.read(name).decode()
        for namespace in ('oslo.config.opts', 'nova_multidest.hypervisors',
                          'console_scripts'):
            self.assertIn('[%s]' % namespace, text)


class TestInstallBesideNova(WheelFixtureMixin, testtools.TestCase):
    """Install nova and our wheel into a fresh venv, as an operator would.

    The venv reuses this one's dependencies through a .pth file, so only
    nova itself and our wheel are installed into it.
    """

    def test_load_compute_driver_returns_our_driver(self):
        venv = self.useFixture(fixtures.TempDir()).path
        subprocess.run([sys.executable, '-m', 'venv', '--without-pip', venv],
                       check=True)
        purelib = sysconfig.get_path('purelib')
        target_lib = subprocess.run(
            [os.path.join(venv, 'bin', 'python'), '-c',
             'import sysconfig; print(sysconfig.get_path("purelib"))'],
            check=True, capture_output=True, text=True).stdout.strip()
        with open(os.path.join(target_lib, 'parent-env.pth'), 'w') as pth:
            pth.write(purelib + '\n')
        nova_version = _distribution_version('nova')
        subprocess.run(
            [sys.executable, '-m', 'pip', '--python',
             os.path.join(venv, 'bin', 'python'), 'install', '-q',
             '--no-deps', '--ignore-installed', 'nova==%s' % nova_version,
             self.build_wheel()],
            check=True, capture_output=True)
        self.assertTrue(os.path.exists(os.path.join(
            target_lib, 'nova', 'virt', 'multidest', '__init__.py')))
        self.assertTrue(os.path.exists(os.path.join(
            target_lib, 'nova', 'virt', '__init__.py')))
        script = textwrap.dedent('''
            import nova.conf
            from nova.virt import driver, fake
            nova.conf.CONF([], project='nova')
            d = driver.load_compute_driver(fake.FakeVirtAPI(),
                                           'multidest.MultiDestLibvirtDriver')
            import nova
            print(type(d).__module__ + '.' + type(d).__name__)
            print(nova.__file__)
        ''')
        out = subprocess.run(
            [os.path.join(venv, 'bin', 'python'), '-c', script],
            check=True, capture_output=True, text=True, cwd=venv,
            env=dict(os.environ, OS_NOVA_DISABLE_EVENTLET_PATCHING='1'))
        cls_name, nova_file = out.stdout.split()
        self.assertEqual(
            'nova_multidest.compute.driver.MultiDestLibvirtDriver', cls_name)
        self.assertTrue(nova_file.startswith(target_lib), nova_file)


def _distribution_version(name):
    from importlib import metadata
    return metadata.version(name)
