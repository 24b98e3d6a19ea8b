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

"""Validators for ``multidest:`` flavor extra specs.

Nova loads this module through the ``nova.api.extra_spec_validators``
entry point namespace and rejects, with 400, a flavor extra spec of our
namespace whose name or value these validators do not accept.
"""

from nova.api.validation.extra_specs import base

from nova_multidest import vocabulary

EXTRA_SPEC_VALIDATORS = [
    base.ExtraSpecValidator(
        name=vocabulary.EXTRA_SPEC_DESTINATIONS,
        description=(
            'Number of destination hosts a multi-destination live migration '
            'of servers of this flavor uses when the request names neither '
            'hosts nor a count. Capped by [multidest] max_destinations.'
        ),
        value={
            'type': int,
            'description': 'A number of destination hosts.',
            'min': 1,
            'max': vocabulary.MAX_DESTINATIONS,
        },
    ),
    base.ExtraSpecValidator(
        name=vocabulary.EXTRA_SPEC_TOPOLOGY,
        description=(
            'How the migration stream of servers of this flavor reaches the '
            'destinations; overrides [multidest] topology.'
        ),
        value={
            'type': str,
            'description': 'star: the source sends to every destination; '
                           'chain: each destination forwards to the next.',
            'enum': list(vocabulary.Topology.ALL),
        },
    ),
]


def register():
    return EXTRA_SPEC_VALIDATORS
