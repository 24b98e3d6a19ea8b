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

"""The base every test of nova-multidest builds on.

Options are process-wide: a test that changes one must see it undone
whatever happens, or the next test in the same worker runs with it.
"""

from oslo_config import fixture as config_fixture
import testtools

from nova_multidest import conf


class TestCase(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.config = self.useFixture(config_fixture.Config(conf.CONF))

    def flags(self, group='multidest', **options):
        """Set options of ``group`` (``None`` for [DEFAULT]) for this test."""
        self.config.config(group=group, **options)
