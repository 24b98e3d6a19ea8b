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

import configparser
import os
import sys

import testtools

from nova_multidest.api import filter as multidest_filter

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
OURS = os.path.join(REPO, 'etc', 'api-paste.ini')
NOVAS = os.path.join(sys.prefix, 'etc', 'nova', 'api-paste.ini')


def read(path):
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path)
    return parser


class TestApiPasteSample(testtools.TestCase):

    def test_filter_follows_keystonecontext_in_v21_only(self):
        ours = read(OURS)
        v21 = ours['composite:openstack_compute_api_v21']['keystone'].split()
        self.assertEqual(['keystonecontext', 'multidest',
                          'osapi_compute_app_v21'], v21[-3:])
        legacy = ours[
            'composite:openstack_compute_api_v21_legacy_v2_compatible']
        self.assertNotIn('multidest', legacy['keystone'].split())
        self.assertEqual('nova_multidest.api.filter:filter_factory',
                         ours['filter:multidest']['paste.filter_factory'])

    def test_otherwise_novas_own(self):
        """The sample is the tested Nova's api-paste.ini plus our filter."""
        ours, novas = read(OURS), read(NOVAS)
        ours.remove_section('filter:multidest')
        section = ours['composite:openstack_compute_api_v21']
        section['keystone'] = ' '.join(
            name for name in section['keystone'].split()
            if name != 'multidest')
        self.assertEqual(
            {name: dict(novas[name]) for name in novas.sections()},
            {name: dict(ours[name]) for name in ours.sections()})

    def test_factory_wraps_the_app(self):
        self.assertIs(multidest_filter.MultiDestinationFilter,
                      multidest_filter.filter_factory({}))
