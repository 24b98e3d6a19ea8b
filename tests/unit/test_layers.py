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

"""README.rst's layer rule, checked on every import of the package.

Each folder of nova_multidest/ imports only the folders below it (and the
shared root modules), and never what its process must not load: the data
plane runs without OpenStack, nova-api and the conductor never load
libvirt, the admin's client never loads Nova.
"""

import ast
import pathlib
import sys

import fixtures
import testtools

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = 'nova_multidest'
SHARED = ('exceptions', 'vocabulary')
ANYTHING = None

# What each part of nova_multidest may import from nova_multidest.
MAY_IMPORT = {
    'vocabulary': (),
    'exceptions': (),
    'conf': ('vocabulary',),
    'migration_limits': ('conf',) + SHARED,
    'dataplane': ('dataplane',) + SHARED,
    'virt': ('virt', 'dataplane', 'conf', 'migration_limits') + SHARED,
    'compute': ('compute', 'virt', 'dataplane', 'conf',
                'migration_limits') + SHARED,
    'conductor': ('conductor', 'compute.rpcapi', 'conf',
                  'migration_limits') + SHARED,
    'api': ('api', 'conductor.rpcapi', 'conf') + SHARED,
    'osc': ('osc', 'vocabulary'),
    'cmd': ANYTHING,
}
# Third-party modules each part never imports; STDLIB_ONLY: none at all.
STDLIB_ONLY = 'the standard library only'
NEVER = {
    'vocabulary': STDLIB_ONLY,
    'exceptions': STDLIB_ONLY,
    'dataplane': STDLIB_ONLY,
    'conf': ('nova', 'libvirt', 'libvirt_qemu'),
    'migration_limits': ('nova.virt', 'libvirt', 'libvirt_qemu'),
    'conductor': ('nova.virt', 'libvirt', 'libvirt_qemu'),
    'api': ('nova.virt', 'libvirt', 'libvirt_qemu'),
    'osc': ('nova', 'libvirt', 'libvirt_qemu'),
}


def imports(path):
    """Every module name ``path`` imports, at any depth of its code."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                yield '%s.%s' % (node.module, alias.name)


def _within(name, prefixes):
    return any(name == p or name.startswith(p + '.') for p in prefixes)


def violations(part, path, label):
    allowed = MAY_IMPORT[part]
    never = NEVER.get(part, ())
    for name in imports(path):
        top = name.split('.')[0]
        if top == PACKAGE:
            inner = name[len(PACKAGE) + 1:]
            if allowed is not ANYTHING and not _within(inner, allowed):
                yield '%s imports %s' % (label, name)
        elif never == STDLIB_ONLY:
            if top not in sys.stdlib_module_names:
                yield '%s imports %s (%s)' % (label, name, STDLIB_ONLY)
        elif _within(name, never):
            yield '%s imports %s' % (label, name)


def parts():
    for path in sorted((ROOT / PACKAGE).rglob('*.py')):
        first = path.relative_to(ROOT / PACKAGE).parts[0]
        part = first[:-len('.py')] if first.endswith('.py') else first
        if part == '__init__':
            continue
        yield part, path


class LayerTest(testtools.TestCase):

    def test_every_part_has_a_rule(self):
        self.assertEqual(set(MAY_IMPORT), {part for part, _ in parts()})

    def test_no_import_breaks_the_layer_rule(self):
        found = [v for part, path in parts()
                 for v in violations(part, path, path.relative_to(ROOT))]
        self.assertEqual([], found)

    def test_the_driver_loader_imports_only_the_standard_library(self):
        # nova_multidest_loader.pth imports it in every interpreter of
        # the environment; the driver itself is imported only when Nova
        # asks for nova.virt.multidest.
        loader = ROOT / PACKAGE / 'compute' / 'loader.py'
        self.assertEqual(
            [], [name for name in imports(loader)
                 if name.split('.')[0] not in sys.stdlib_module_names])

    def test_the_checker_finds_forbidden_imports(self):
        path = pathlib.Path(self.useFixture(fixtures.TempDir()).path,
                            'probe.py')
        path.write_text('import json\n'
                        'import oslo_log\n'
                        'from nova_multidest import vocabulary\n'
                        'def f():\n'
                        '    from nova_multidest.virt import driver\n')
        self.assertEqual(
            ['probe imports oslo_log (%s)' % STDLIB_ONLY,
             'probe imports nova_multidest.virt.driver'],
            list(violations('dataplane', path, 'probe')))
        path.write_text('from nova.virt import driver\n'
                        'from nova_multidest.compute import endpoint\n'
                        'from nova_multidest.compute import rpcapi\n')
        self.assertEqual(
            ['probe imports nova.virt.driver',
             'probe imports nova_multidest.compute.endpoint'],
            list(violations('conductor', path, 'probe')))
