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

import filecmp
import os

import fixtures

from oslo_config import cfg
from oslo_config import fixture as config_fixture
from oslo_config import generator
import testtools

from nova_multidest import conf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


class TestOptions(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.conf = self.useFixture(config_fixture.Config(cfg.ConfigOpts()))
        conf.register_opts(self.conf.conf)

    def test_list_opts_names_the_group_and_every_option(self):
        [(group, opts)] = conf.list_opts()
        self.assertEqual('multidest', group.name)
        self.assertEqual(len(conf.ALL_OPTS), len(opts))
        self.assertEqual(len(opts), len({o.name for o in opts}))

    def test_every_option_has_help(self):
        for opt in conf.ALL_OPTS:
            self.assertGreater(len(opt.help or ''), 20, opt.name)

    def test_destination_count_is_bounded(self):
        self.assertRaises(ValueError, self.conf.config,
                          max_destinations=0, group='multidest')
        self.assertRaises(ValueError, self.conf.config,
                          max_destinations=17, group='multidest')

    def test_topology_choices(self):
        self.conf.config(topology='chain', group='multidest')
        self.assertEqual('chain', self.conf.conf.multidest.topology)
        self.assertRaises(ValueError, self.conf.config,
                          topology='ring', group='multidest')

    def test_warm_up_percent_is_a_percentage(self):
        self.assertRaises(ValueError, self.conf.config,
                          warm_up_percent=101, group='multidest')


class TestSampleConfig(testtools.TestCase):
    """etc/nova-multidest.conf.sample is generated, never hand-edited."""

    def test_committed_sample_matches_generator(self):
        out = os.path.join(self.useFixture(fixtures.TempDir()).path,
                           'sample.conf')
        generator.main([
            '--config-file',
            os.path.join(REPO, 'etc', 'nova-multidest-config-generator.conf'),
            '--output-file', out])
        committed = os.path.join(REPO, 'etc', 'nova-multidest.conf.sample')
        self.assertTrue(
            filecmp.cmp(out, committed, shallow=False),
            'etc/nova-multidest.conf.sample is stale: run "tox -e genconfig"')
