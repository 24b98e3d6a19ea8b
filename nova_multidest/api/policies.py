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

"""oslo.policy rules of the multi-destination live migration action.

The rules live in nova-api's own enforcer (see ``register``), so operators
override them in Nova's policy file like any Nova rule.
``list_rules`` feeds oslopolicy-sample-generator through the
``oslo.policy.policies`` entry point.
"""

from oslo_policy import policy

POLICY_ROOT = 'multidest:servers:%s'
MIGRATE_LIVE_MULTI = POLICY_ROOT % 'migrate_live'
MIGRATE_LIVE_MULTI_HOST = POLICY_ROOT % 'migrate_live:host'

# Nova's own base rule, so that its definition of "admin" applies.
ADMIN = 'rule:context_is_admin'

_OPERATION = [{'method': 'POST',
               'path': '/servers/{server_id}/action (os-migrateLive-multi)'}]

rules = [
    policy.DocumentedRuleDefault(
        name=MIGRATE_LIVE_MULTI,
        check_str=ADMIN,
        description='Live migrate a server to several destination hosts at '
                    'once, chosen by the scheduler; the first destination '
                    'where the server comes up wins.',
        operations=_OPERATION,
        scope_types=['project']),
    policy.DocumentedRuleDefault(
        name=MIGRATE_LIVE_MULTI_HOST,
        check_str=ADMIN,
        description='Live migrate a server to several destination hosts at '
                    'once, naming the destination hosts instead of letting '
                    'the scheduler choose them.',
        operations=_OPERATION,
        scope_types=['project']),
]


def list_rules():
    return rules


def register(enforcer):
    """Add our defaults to an enforcer that does not have them yet.

    Nova builds its enforcer lazily and drops it on reset, so the API
    registers on every request; the check makes that cheap and idempotent.
    """
    missing = [rule for rule in rules
               if rule.name not in enforcer.registered_rules]
    if missing:
        enforcer.register_defaults(missing)
