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

"""Request body of the multi-destination live migration server action.

The schema depends on ``[multidest] max_destinations``, so it is built per
request rather than declared once like Nova's.
"""

import jsonschema

from nova.api.validation import parameter_types

from nova_multidest import exceptions
from nova_multidest import vocabulary

_HINTS = {
    'additionalProperties': 'Remove the unexpected field.',
    'uniqueItems': 'Name each destination host once.',
    'maxItems': 'Name at most {max} destination hosts '
                '([multidest] max_destinations).',
    'maximum': 'Ask for at most {max} destinations '
               '([multidest] max_destinations).',
    'enum': 'Use true, false or "auto".',
}


def migrate_live_multi(max_destinations):
    host = dict(parameter_types.fqdn)
    return {
        'type': 'object',
        'properties': {
            vocabulary.SERVER_ACTION: {
                'type': 'object',
                'properties': {
                    'destinations': {
                        'type': 'array',
                        'items': host,
                        'minItems': 1,
                        'maxItems': max_destinations,
                        'uniqueItems': True,
                    },
                    'count': {
                        'type': 'integer',
                        'minimum': 1,
                        'maximum': max_destinations,
                    },
                    'block_migration': {
                        'type': ['boolean', 'string'],
                        'enum': [True, False, 'auto'],
                    },
                    'warm_up': {'type': 'boolean'},
                },
                'additionalProperties': False,
            },
        },
        'required': [vocabulary.SERVER_ACTION],
        'additionalProperties': False,
    }


def validate(body, max_destinations):
    """Return the action's arguments with defaults filled in.

    :raises: InvalidMigrationRequest naming the field and how to fix it.
    """
    validator = jsonschema.Draft202012Validator(
        migrate_live_multi(max_destinations))
    error = jsonschema.exceptions.best_match(validator.iter_errors(body))
    if error is not None:
        raise exceptions.InvalidMigrationRequest(
            reason=_describe(error, max_destinations))
    args = body[vocabulary.SERVER_ACTION]
    if 'destinations' in args and 'count' in args:
        raise exceptions.InvalidMigrationRequest(
            reason="give either 'destinations' or 'count', not both.")
    return {
        'destinations': args.get('destinations'),
        'count': args.get('count'),
        'block_migration': args.get('block_migration', 'auto'),
        'warm_up': args.get('warm_up', False),
    }


def _describe(error, max_destinations):
    field = '/'.join(str(part) for part in error.absolute_path) or 'body'
    message = "field '%s': %s." % (field, error.message)
    hint = _HINTS.get(error.validator)
    if hint:
        message += ' ' + hint.format(max=max_destinations)
    return message
