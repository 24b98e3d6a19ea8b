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

import os
import subprocess
import sys
import tempfile

from oslo_config import cfg
from oslo_policy import policy as oslo_policy
import testtools

from nova import policies as nova_policies

from nova_multidest.api import policies

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def credentials(*roles):
    return {'roles': list(roles), 'project_id': 'p1', 'user_id': 'u1',
            'is_admin': 'admin' in roles}


class TestPolicies(testtools.TestCase):

    def setUp(self):
        super().setUp()
        conf = cfg.ConfigOpts()
        conf([])
        self.enforcer = oslo_policy.Enforcer(conf)
        self.enforcer.register_defaults(nova_policies.list_rules())
        policies.register(self.enforcer)

    def allowed(self, rule, *roles):
        return self.enforcer.authorize(rule, {'project_id': 'p1'},
                                       credentials(*roles))

    def test_admin_only_by_default(self):
        for rule in (policies.MIGRATE_LIVE_MULTI,
                     policies.MIGRATE_LIVE_MULTI_HOST):
            self.assertTrue(self.allowed(rule, 'reader', 'member', 'admin'))
            self.assertFalse(self.allowed(rule, 'reader', 'member',
                                          'manager'))

    def test_register_is_idempotent(self):
        policies.register(self.enforcer)
        self.assertEqual(
            {r.name for r in policies.list_rules()},
            {name for name in self.enforcer.registered_rules
             if name.startswith('multidest:')})

    def test_operator_override(self):
        self.enforcer.set_rules(oslo_policy.Rules.from_dict(
            {policies.MIGRATE_LIVE_MULTI: 'role:member'}), overwrite=False)
        self.assertTrue(self.allowed(policies.MIGRATE_LIVE_MULTI, 'member'))
        self.assertFalse(self.allowed(policies.MIGRATE_LIVE_MULTI_HOST,
                                      'member'))


class TestSample(testtools.TestCase):

    def test_committed_sample_is_generated(self):
        """The committed sample is what the generator writes today."""
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, 'policy.yaml.sample')
            env = dict(os.environ, PYTHONPATH=REPO)
            subprocess.run(
                [os.path.join(os.path.dirname(sys.executable),
                              'oslopolicy-sample-generator'),
                 '--namespace', 'nova_multidest', '--output-file', out],
                check=True, env=env, cwd=REPO, capture_output=True)
            with open(out) as generated, open(os.path.join(
                    REPO, 'etc', 'nova-multidest.policy.yaml.sample')) as kept:
                self.assertEqual(generated.read(), kept.read())
