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

"""``openstack server migrate --multi-destination``.

A cliff hook on python-openstackclient's ``server migrate``: it adds the
options and, when ``--multi-destination`` is given, runs the
multi-destination action instead of the command's own. Without that option
the command is left exactly as it was. The admin's machine needs no Nova:
this package only talks to the compute API through openstacksdk.
"""

import re
import time

from cliff import hooks
from openstack import exceptions as sdk_exceptions
from osc_lib import exceptions

from nova_multidest.osc import progress
from nova_multidest import vocabulary

# Lists Migration records with uuid (2.59) and instance actions with the
# details of failed events (2.84).
MIGRATIONS_MICROVERSION = '2.59'
ACTIONS_MICROVERSION = '2.84'
POLL_INTERVAL = 1.0
# Longest part of a refused host name the client repeats, and of one
# failure reason --wait prints.
SHOWN_CHARACTERS = 40
REASON_CHARACTERS = 160

_OUR_OPTIONS = {'multidest_hosts': '--destination',
                'multidest_count': '--destinations',
                'multidest_warm_up': '--warm-up'}
_HOST_NAME = re.compile(vocabulary.HOST_NAME_PATTERN)


class MultiDestinationMigrateHook(hooks.CommandHook):
    """Adds multi-destination live migration to ``server migrate``."""

    def get_parser(self, parser):
        group = parser.add_argument_group(
            'multi-destination live migration',
            'Live migrate to several hosts at once; the first destination '
            'where the server comes up wins, the others are reverted.')
        group.add_argument(
            '--multi-destination', action='store_true',
            dest='multi_destination',
            help='Live migrate to several destinations at once (admin only '
                 'by default). Implies --live-migration.')
        group.add_argument(
            '--destination', metavar='<host>', action='append',
            dest='multidest_hosts',
            help='A destination host; repeat for each destination. Without '
                 'it the scheduler picks the hosts.')
        group.add_argument(
            '--destinations', metavar='<count>', type=int,
            dest='multidest_count',
            help='Number of destinations the scheduler picks (default: the '
                 'flavor\'s multidest:destinations extra spec, else the '
                 'cloud\'s [multidest] default_destinations).')
        group.add_argument(
            '--warm-up', action='store_true', dest='multidest_warm_up',
            help='Keep copying memory to the destinations until "openstack '
                 'server migration force complete" switches over.')
        return parser

    def get_epilog(self):
        return ('With --multi-destination, --wait shows the progress of '
                'every destination and fails with the server\'s fault when '
                'no destination won.')

    def before(self, parsed_args):
        if not getattr(parsed_args, 'multi_destination', False):
            # --destinations 0 counts: without the flag, Nova's cold
            # migration would run instead of what was asked for.
            used = [option for name, option in _OUR_OPTIONS.items()
                    if getattr(parsed_args, name, None) is not None and
                    getattr(parsed_args, name) is not False]
            if used:
                raise exceptions.CommandError(
                    '%s need%s --multi-destination; without it the command '
                    'runs Nova\'s own (single-destination) migration.' % (
                        ' and '.join(used), '' if len(used) > 1 else 's'))
            return parsed_args
        check_options(parsed_args)
        # cliff runs take_action right after the hooks; this command
        # instance runs ours instead.
        self.cmd.take_action = self.take_action
        return parsed_args

    def after(self, parsed_args, return_code):
        return return_code

    def take_action(self, parsed_args):
        compute = self.cmd.app.client_manager.compute
        stdout = self.cmd.app.stdout
        server = compute.find_server(parsed_args.server, ignore_missing=False)
        known = ({m['id'] for m in list_migrations(compute, server.id) or []}
                 if parsed_args.wait else set())

        response = compute.post(
            '/servers/%s/action' % server.id,
            json={vocabulary.SERVER_ACTION: request_body(parsed_args)},
            microversion=vocabulary.ACTION_MICROVERSION)
        check_response(response, 'Multi-destination live migration of '
                                 'server %s refused' % server.id)
        accepted = response.json()[vocabulary.RESPONSE_KEY]
        stdout.write('Multi-destination live migration of server %s '
                     'accepted: %s (request %s)\n' % (
                         server.id, describe_targets(accepted),
                         accepted['request_id']))
        if parsed_args.wait:
            bars = progress.ProgressBars(
                stdout, memory_bytes=flavor_memory_bytes(server))
            wait_for_outcome(compute, server, known, accepted['request_id'],
                             bars, stdout)


def flavor_memory_bytes(server):
    """The server's RAM as its embedded flavor tells (2.47+), else 0."""
    flavor = getattr(server, 'flavor', None) or {}
    ram = (flavor.get('ram') if isinstance(flavor, dict)
           else getattr(flavor, 'ram', None))
    return ram * progress.MiB if isinstance(ram, int) else 0


def check_options(parsed_args):
    if parsed_args.host:
        raise exceptions.CommandError(
            'Use --destination (repeated) instead of --host with '
            '--multi-destination.')
    if parsed_args.disk_overcommit is not None:
        raise exceptions.CommandError(
            '--disk-overcommit and --no-disk-overcommit do not apply to '
            '--multi-destination.')
    if (parsed_args.multidest_hosts is not None and
            parsed_args.multidest_count is not None):
        raise exceptions.CommandError(
            'Give either --destination hosts or --destinations <count>, '
            'not both.')
    if parsed_args.multidest_count is not None and (
            parsed_args.multidest_count < 1):
        raise exceptions.CommandError(
            '--destinations must be at least 1 (got %d); leave it out to '
            'use the flavor\'s or the cloud\'s default.' %
            parsed_args.multidest_count)
    for host in parsed_args.multidest_hosts or []:
        check_host_name(host)


def check_host_name(host):
    """Refuse what nova-api would, without echoing a long name whole."""
    if len(host) > vocabulary.HOST_NAME_MAX_LENGTH:
        raise exceptions.CommandError(
            '--destination: a host name of %d characters is too long (at '
            'most %d): %s' % (len(host), vocabulary.HOST_NAME_MAX_LENGTH,
                              shown(host)))
    if not host or not _HOST_NAME.match(host):
        raise exceptions.CommandError(
            '--destination: %s is not a host name; use letters, digits, '
            '"-", "." and "_" only.' % shown(host))


def shown(text):
    text = repr(text)
    if len(text) <= SHOWN_CHARACTERS:
        return text
    return '%s... (%d characters)' % (text[:SHOWN_CHARACTERS], len(text))


def request_body(parsed_args):
    body = {
        'block_migration': ('auto' if parsed_args.block_migration is None
                            else parsed_args.block_migration),
        'warm_up': parsed_args.multidest_warm_up,
    }
    if parsed_args.multidest_hosts is not None:
        body['destinations'] = parsed_args.multidest_hosts
    elif parsed_args.multidest_count is not None:
        body['count'] = parsed_args.multidest_count
    return body


def check_response(response, what):
    try:
        sdk_exceptions.raise_from_response(response)
    except sdk_exceptions.HttpException as error:
        raise exceptions.CommandError('%s (HTTP %s): %s' % (
            what, response.status_code, error.details or error))


def describe_targets(accepted):
    if accepted.get('destinations'):
        return 'destinations %s' % ', '.join(accepted['destinations'])
    return '%d destinations chosen by the scheduler' % accepted['count']


def list_migrations(compute, server_id):
    """The server's live migrations, or None if policy hides them."""
    response = compute.get(
        '/os-migrations', params={'instance_uuid': server_id,
                                  'migration_type': 'live-migration'},
        microversion=MIGRATIONS_MICROVERSION)
    if response.status_code == 403:
        return None
    check_response(response, 'Cannot list the migrations of server %s' %
                   server_id)
    migrations = response.json()['migrations']
    progress_by_id = in_progress(compute, server_id)
    for migration in migrations:
        migration.update(progress_by_id.get(migration['id'], {}))
    return migrations


def in_progress(compute, server_id):
    """Byte counters of the server's running migrations, by id.

    Only this API has them; /os-migrations, which also lists finished
    migrations, does not.
    """
    response = compute.get('/servers/%s/migrations' % server_id,
                           microversion=MIGRATIONS_MICROVERSION)
    if response.status_code >= 400:
        return {}
    return {migration['id']: {key: value for key, value in migration.items()
                              if key.startswith(('memory_', 'disk_'))}
            for migration in response.json()['migrations']}


def wait_for_outcome(compute, server, known, request_id, bars, stdout,
                     sleep=time.sleep):
    """Follow the destinations until the server has no task left.

    The winner's compute clears the server's task_state (Nova's
    post_live_migration_at_destination) before the conductor records its
    migration completed, so the group is over only once every migration
    it made is final too.

    :raises: CommandError with the reason when no destination won.
    """
    while True:
        current = compute.get_server(server.id)
        listed = list_migrations(compute, server.id)
        ours = (None if listed is None else
                [m for m in listed if m['id'] not in known])
        bars.update(ours or [])
        if current.status == 'ERROR':
            raise exceptions.CommandError(
                'Multi-destination live migration of server %s failed: %s' %
                (server.id, fault_message(current.fault)))
        if current.task_state is None and all(
                m['status'] in vocabulary.MigrationStatus.NOVA_FINAL
                for m in ours or []):
            break
        sleep(POLL_INTERVAL)

    failures = action_failures(compute, server.id, request_id)
    if ours is not None:
        won = any(m['status'] == vocabulary.MigrationStatus.COMPLETED
                  for m in ours)
    else:
        won = not failures
    if not won:
        raise exceptions.CommandError(
            'Multi-destination live migration of server %s failed; it keeps '
            'running on %s: %s' % (
                server.id, current.compute_host or 'its source host',
                '; '.join(summarize(failures)) or
                'no reason recorded (request %s)' % request_id))
    stdout.write('Server %s now runs on %s.\n' % (
        server.id, current.compute_host or 'its new host'))


def fault_message(fault):
    if not fault:
        return 'no fault recorded'
    return fault.get('message') or str(fault)


def action_failures(compute, server_id, request_id):
    """(event, reason) of each failure the request's action records."""
    response = compute.get(
        '/servers/%s/os-instance-actions/%s' % (server_id, request_id),
        microversion=ACTIONS_MICROVERSION)
    if response.status_code >= 400:
        return []
    action = response.json()['instanceAction']
    return [(event['event'], event_reason(event))
            for event in action.get('events') or []
            if event.get('result') == 'Error']


def summarize(failures):
    """One short reason per destination, else the group's.

    The group's event repeats every destination's reason; shown both
    ways they made a message of several hundred characters.
    """
    prefix = vocabulary.EVENT_DESTINATION % ''
    chosen = ([f for f in failures if f[0].startswith(prefix)] or
              failures)
    return [shorten(reason) for _, reason in chosen]


def shorten(reason):
    if len(reason) <= REASON_CHARACTERS:
        return reason
    return reason[:REASON_CHARACTERS - 3].rstrip() + '...'


def event_reason(event):
    return event.get('details') or 'failed, see the compute logs'
