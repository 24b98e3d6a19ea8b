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
request rather than declared once like Nova's. Types are strict where
Nova's validator is lenient: JSON ``2.0`` is not an integer here, because
a count that is not a whole number cannot be honoured. Messages name the
field and what to send instead, and never echo more than the start of a
value.
"""

import json

import jsonschema

from nova.api.validation import parameter_types

from nova_multidest import exceptions
from nova_multidest import vocabulary

# Longest part of a refused value a message repeats.
SHOWN_CHARACTERS = 40


def _strict_integer(checker, instance):
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        'integer', _strict_integer))

_JSON_TYPES = {'integer': 'an integer', 'boolean': 'true or false',
               'string': 'a string', 'array': 'a list', 'object': 'an object'}


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
    validator = _Validator(migrate_live_multi(max_destinations))
    error = jsonschema.exceptions.best_match(validator.iter_errors(body))
    if error is not None:
        raise exceptions.InvalidMigrationRequest(
            reason=_describe(error, max_destinations))
    args = body[vocabulary.SERVER_ACTION]
    if 'destinations' in args and 'count' in args:
        raise exceptions.InvalidMigrationRequest(
            reason="give either 'destinations' or 'count', not both.")
    _check_distinct(args.get('destinations') or [])
    return {
        'destinations': args.get('destinations'),
        'count': args.get('count'),
        'block_migration': args.get('block_migration', 'auto'),
        'warm_up': args.get('warm_up', False),
    }


def _check_distinct(hosts):
    """Host names are DNS names: one host, whatever the letter case."""
    seen = {}
    for host in hosts:
        other = seen.setdefault(host.lower(), host)
        if other != host:
            raise exceptions.InvalidMigrationRequest(reason=(
                "field '%s/destinations': %s and %s are the same host (host "
                "names ignore letter case). Name each destination host "
                "once." % (vocabulary.SERVER_ACTION, shown(other),
                           shown(host))))


def shown(value):
    """A value as JSON, cut short: messages never echo a whole value."""
    text = json.dumps(value)
    if len(text) <= SHOWN_CHARACTERS:
        return text
    return '%s... (%d characters)' % (text[:SHOWN_CHARACTERS], len(text))


def _describe(error, max_destinations):
    field = '/'.join(str(part) for part in error.absolute_path) or 'body'
    problem = _PROBLEMS.get(error.validator, _as_jsonschema_says)(
        error, max_destinations)
    return "field '%s': %s" % (field, problem)


def _as_jsonschema_says(error, max_destinations):
    return '%s.' % error.message


def _wrong_type(error, max_destinations):
    if 'enum' in error.schema:
        return _not_allowed(error, max_destinations)
    wanted = error.validator_value
    if isinstance(wanted, str):
        wanted = [wanted]
    message = '%s is not %s.' % (
        shown(error.instance),
        ' or '.join(_JSON_TYPES.get(name, name) for name in wanted))
    if 'integer' in wanted and isinstance(error.instance, (float, str)):
        message += ' Send a whole number without quotes or decimal point.'
    return message


def _out_of_range(error, max_destinations):
    return ('%s is out of range: ask for at least 1 and at most %d '
            'destinations ([multidest] max_destinations).' % (
                shown(error.instance), max_destinations))


def _bad_host_name(error, max_destinations):
    return ('%s is not a host name: use letters, digits, "-", "." and "_" '
            'only.' % shown(error.instance))


def _host_name_length(error, max_destinations):
    if not error.instance:
        return 'a host name cannot be empty.'
    return ('a host name of %d characters is too long (at most %d): %s.' % (
        len(error.instance), error.validator_value, shown(error.instance)))


def _unexpected(error, max_destinations):
    extra = sorted(set(error.instance) -
                   set(error.schema.get('properties', {})))
    return ('%s was unexpected. Remove the unexpected field; the fields are '
            '%s.' % (', '.join(shown(name) for name in extra),
                     ', '.join(sorted(error.schema.get('properties', {})))))


def _duplicate(error, max_destinations):
    return 'the list names a host twice. Name each destination host once.'


def _too_many(error, max_destinations):
    return ('%d hosts named. Name at most %d destination hosts ([multidest] '
            'max_destinations).' % (len(error.instance), max_destinations))


def _too_few(error, max_destinations):
    return ('the list is empty. Name at least one destination host, or '
            'leave the field out to let the scheduler choose.')


def _not_allowed(error, max_destinations):
    return '%s is not allowed. Use true, false or "auto".' % shown(
        error.instance)


_PROBLEMS = {
    'type': _wrong_type,
    'minimum': _out_of_range,
    'maximum': _out_of_range,
    'pattern': _bad_host_name,
    'minLength': _host_name_length,
    'maxLength': _host_name_length,
    'additionalProperties': _unexpected,
    'uniqueItems': _duplicate,
    'maxItems': _too_many,
    'minItems': _too_few,
    'enum': _not_allowed,
}
