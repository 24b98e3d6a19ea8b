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

"""Each shared word is declared once, in nova_multidest/vocabulary.py.

A declaration is a string bound to an UPPER_CASE name at module or class
level, alone or inside a tuple, list or set. Two declarations of one word
drift apart; the shared ones live in vocabulary.py and everything else
imports them.
"""

import ast
import collections
import pathlib

import fixtures
import testtools

from nova_multidest import vocabulary

ROOT = pathlib.Path(__file__).resolve().parents[2]
VOCABULARY = ROOT / 'nova_multidest' / 'vocabulary.py'
# Each RPC API numbers its own versions.
PER_API = ('RPC_API_VERSION', 'VERSION_CAP')


def _strings(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        for element in node.elts:
            yield from _strings(element)
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and
            node.func.id in ('frozenset', 'set', 'tuple')):
        for argument in node.args:
            yield from _strings(argument)


def declarations(path):
    """(name, word) of every string constant ``path`` declares."""
    tree = ast.parse(path.read_text(), str(path))
    scopes = [tree] + [node for node in tree.body
                       if isinstance(node, ast.ClassDef)]
    for scope in scopes:
        for node in scope.body:
            if not isinstance(node, ast.Assign):
                continue
            for target in node.targets:
                if (isinstance(target, ast.Name) and target.id.isupper() and
                        target.id not in PER_API):
                    for word in _strings(node.value):
                        yield target.id, word


def vocabulary_words():
    """{word: [names]} of the single words vocabulary.py names."""
    words = collections.defaultdict(list)
    for name, value in vars(vocabulary).items():
        if isinstance(value, str) and name.isupper():
            words[value].append(name)
        elif isinstance(value, type):
            for attribute, word in vars(value).items():
                if isinstance(word, str) and attribute.isupper():
                    words[word].append('%s.%s' % (name, attribute))
    return words


def python_files(*folders):
    for folder in folders:
        for path in sorted((ROOT / folder).rglob('*.py')):
            if path != VOCABULARY:
                yield path


class VocabularyTest(testtools.TestCase):

    def test_each_vocabulary_names_a_word_once(self):
        for name, value in vars(vocabulary).items():
            if not isinstance(value, type) or value.__module__ != (
                    vocabulary.__name__):
                continue
            words = [word for attribute, word in vars(value).items()
                     if attribute.isupper() and isinstance(word, str)]
            duplicates = [w for w, n in collections.Counter(words).items()
                          if n > 1]
            self.assertEqual([], duplicates, name)
        module_level = [value for name, value in vars(vocabulary).items()
                        if name.isupper() and isinstance(value, str)]
        self.assertEqual(len(module_level), len(set(module_level)))

    def test_no_module_declares_a_vocabulary_word_again(self):
        words = vocabulary_words()
        found = []
        for path in python_files('nova_multidest', 'tests', 'benchmarks'):
            for name, word in declarations(path):
                if word in words:
                    found.append('%s: %s = %r (vocabulary.%s)' % (
                        path.relative_to(ROOT), name, word,
                        ' or '.join(words[word])))
        self.assertEqual([], found)

    def test_no_word_is_declared_by_two_modules(self):
        where = collections.defaultdict(set)
        for path in python_files('nova_multidest'):
            for name, word in declarations(path):
                where[word].add('%s:%s' % (path.relative_to(ROOT), name))
        shared = {word: sorted(places) for word, places in where.items()
                  if len({place.split(':')[0] for place in places}) > 1}
        self.assertEqual({}, shared,
                         'declare these in nova_multidest/vocabulary.py')

    def test_the_checker_finds_declarations(self):
        path = pathlib.Path(self.useFixture(fixtures.TempDir()).path,
                            'sample.py')
        path.write_text("lower = 'x'\n"
                        "STATUS = 'completed'\n"
                        "SIZE = 4096\n"
                        "class Kind(object):\n"
                        "    NAMES = frozenset(('star', 'other'))\n")
        self.assertEqual([('STATUS', 'completed'), ('NAMES', 'star'),
                          ('NAMES', 'other')], list(declarations(path)))


class FlavorTest(testtools.TestCase):

    def test_destination_count_from_the_flavor_is_capped(self):
        spec = vocabulary.EXTRA_SPEC_DESTINATIONS
        self.assertEqual(3, vocabulary.flavor_destination_count(
            {spec: '3'}, 2, 4))
        self.assertEqual(4, vocabulary.flavor_destination_count(
            {spec: '16'}, 2, 4))
        self.assertEqual(2, vocabulary.flavor_destination_count({}, 2, 4))

    def test_topology_from_the_flavor_or_the_default(self):
        self.assertEqual(vocabulary.Topology.CHAIN, vocabulary.flavor_topology(
            {vocabulary.EXTRA_SPEC_TOPOLOGY: vocabulary.Topology.CHAIN},
            vocabulary.Topology.STAR))
        self.assertEqual(vocabulary.Topology.STAR, vocabulary.flavor_topology(
            {}, vocabulary.Topology.STAR))


class GroupRecordTest(testtools.TestCase):

    def test_only_an_active_group_has_an_elected_copy(self):
        active = {vocabulary.SYSMETA_ACTIVE: vocabulary.SYSMETA_ACTIVE_VALUE}
        self.assertIsNone(vocabulary.elected_migration(active))
        self.assertEqual('m-1', vocabulary.elected_migration(
            dict(active, **{vocabulary.SYSMETA_WINNER: 'm-1'})))
        self.assertEqual('m-2', vocabulary.elected_migration(
            dict(active, **{vocabulary.SYSMETA_WINNER: 'm-1',
                            vocabulary.SYSMETA_RESUMED: 'm-2'})))
        self.assertIsNone(vocabulary.elected_migration(
            {vocabulary.SYSMETA_WINNER: 'm-1'}))
