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

"""How many compute hosts a lab has, and that every command agrees."""

import os

import fixtures
import testtools

from tools.lab import layout


class LabHostsTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.top = self.useFixture(fixtures.TempDir()).path

    def names(self, lab):
        return [node.name for node in lab.hosts]

    def test_a_new_lab_has_the_default_hosts(self):
        lab = layout.Lab(self.top, 'abc')
        self.assertEqual(list(layout.HOSTS), self.names(lab))

    def test_a_grown_lab_is_seen_grown_by_the_next_command(self):
        lab = layout.Lab(self.top, 'abc')
        os.makedirs(lab.host_dir('host1'))
        lab.grow(5)
        lab = layout.Lab(self.top, 'abc')
        self.assertEqual(['host1', 'host2', 'host3', 'host4', 'host5'],
                         self.names(lab))
        addresses = [node.address for node in lab.hosts]
        veths = [node.veth for node in lab.hosts]
        self.assertEqual(len(set(addresses)), len(addresses))
        self.assertEqual(len(set(veths)), len(veths))
        self.assertEqual(lab.hosts[4], lab.host('host5'))

    def test_another_lab_keeps_its_own_count(self):
        layout.Lab(self.top, 'abc').grow(6)
        self.assertEqual(list(layout.HOSTS),
                         self.names(layout.Lab(self.top, 'xyz')))

    def test_a_lab_does_not_shrink(self):
        lab = layout.Lab(self.top, 'abc')
        lab.grow(6)
        error = self.assertRaises(ValueError, lab.grow, 5)
        self.assertIn('down --purge', str(error))
        self.assertEqual(6, len(layout.Lab(self.top, 'abc').hosts))

    def test_counts_out_of_range_are_refused(self):
        lab = layout.Lab(self.top, 'abc')
        for count in (len(layout.HOSTS) - 1, layout.MAX_HOSTS + 1):
            error = self.assertRaises(ValueError, lab.grow, count)
            self.assertIn('%d to %d' % (len(layout.HOSTS), layout.MAX_HOSTS),
                          str(error))
        self.assertEqual(list(layout.HOSTS), self.names(lab))
