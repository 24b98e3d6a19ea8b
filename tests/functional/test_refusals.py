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

"""Every kind of bad input, through the real API stack and the real client.

Each row is one refused input: what is sent, the status (or the client's
exit code) expected, fragments the message must hold. After each one the
server must be exactly as before: status, task_state, host, system
metadata, instance actions, faults, Migration records and placement
allocations. Hosts in states that cannot take a server (forced down,
disabled, down, not a compute, not running our driver) are real services
of Nova's harness put in that state.
"""

import json

from oslo_utils import timeutils

from nova import objects

from nova_multidest import vocabulary
from tests.functional import base
from tests.functional import test_api
from tests.functional import test_cli

OTHER_PROJECT = 'abcdef0123456789abcdef0123456789'
ACTION = vocabulary.SERVER_ACTION


def body(**args):
    return {ACTION: args}


class RefusalTestBase(test_api.MultiDestApiTestBase):
    """Three computes running our driver, one running Nova's own."""

    COMPUTES = 3

    def setUp(self):
        super().setUp()
        self.flags(compute_driver='libvirt.LibvirtDriver')
        self.plain_host = self.start_compute(hostname='plain1')
        self.flags(compute_driver=base.DRIVER)
        self.source = self.hostnames[0]
        self.server = self.boot_server(host=self.source)

    def snapshot(self):
        """What a refused request must leave exactly as it was."""
        server_id = self.server['id']
        server = self.admin_api.get_server(server_id)
        instance = self.get_instance(server_id)
        ctxt = self.cell_context()
        return {
            'server': {key: server[key] for key in (
                'status', 'OS-EXT-STS:task_state', 'OS-EXT-SRV-ATTR:host')},
            'instance': (instance.vm_state, instance.task_state,
                         instance.host, instance.node),
            'system_metadata': dict(instance.system_metadata),
            'actions': [action.request_id for action in
                        objects.InstanceActionList.get_by_instance_uuid(
                            ctxt, server_id)],
            'faults': len(objects.InstanceFaultList.get_by_instance_uuids(
                ctxt, [server_id])),
            'migrations': [(m.id, m.status)
                           for m in self.get_migrations(server_id)],
            'allocations': self.placement.get(
                '/allocations/%s' % server_id).body['allocations'],
        }

    def post(self, payload, headers=None, project=None, microversion='2.74',
             content_type='application/json', server_id=None):
        """POST the action as raw HTTP; return (status, message)."""
        api = self.admin_api
        url = '%s%s/servers/%s/action' % (
            api.base_url, '/' + project if project else '',
            server_id or self.server['id'])
        sent = {'X-Auth-User': api.auth_user, 'X-User-Id': api.auth_user,
                'X-Auth-Project-Id': api.project_id,
                'X-Roles': ','.join(api.roles),
                'Content-Type': content_type}
        if microversion:
            sent['OpenStack-API-Version'] = 'compute %s' % microversion
        sent.update(headers or {})
        if not isinstance(payload, (str, bytes)):
            payload = json.dumps(payload)
        response = api.request(url, method='POST', body=payload,
                               headers=sent)
        try:
            [fault] = response.json().values()
            message = fault.get('message', '')
        except ValueError:
            message = response.text
        return response.status_code, message

    def check_refusals(self, rows, send, longest=600):
        """Send each row; return a list of what did not hold."""
        before = self.snapshot()
        wrong = []
        for row in rows:
            expected_status, fragments = row[-2], row[-1]
            status, message = send(*row[:-2])
            missing = [f for f in fragments if f not in message]
            if status != expected_status or missing:
                wrong.append('%r: got %s %r, wanted %s with %r' % (
                    row[:-2], status, message[:300], expected_status,
                    missing))
            after = self.snapshot()
            if after != before:
                wrong.append('%r changed %s' % (row[:-2], {
                    key: (before[key], after[key]) for key in before
                    if before[key] != after[key]}))
                before = after
            if len(message) > longest:
                wrong.append('%r: %d-character message' % (row[:-2],
                                                           len(message)))
        return wrong


class TestApiRefusals(RefusalTestBase):
    """About 80 bad requests against the API, each changing nothing."""

    def setUp(self):
        super().setUp()
        self.put_hosts_in_bad_states()

    def put_hosts_in_bad_states(self):
        """Through Nova's own os-services API, as an operator would."""
        self.forced_host = self.start_compute(hostname='forced1')
        self.disabled_host = self.start_compute(hostname='disabled1')
        self.down_host = self.start_compute(hostname='down1')
        self.admin_api.microversion = '2.53'
        services = {(s['host'], s['binary']): s
                    for s in self.admin_api.get_services()}
        self.admin_api.api_put(
            '/os-services/%s' % services[self.forced_host,
                                         'nova-compute']['id'],
            {'forced_down': True})
        self.admin_api.api_put(
            '/os-services/%s' % services[self.disabled_host,
                                         'nova-compute']['id'],
            {'status': 'disabled', 'disabled_reason': 'maintenance'})
        self.admin_api.microversion = '2.74'
        # A compute whose heartbeats stopped long ago.
        self.computes[self.down_host].stop()
        down = objects.Service.get_by_compute_host(self.cell_context(),
                                                   self.down_host)
        down.last_seen_up = timeutils.utcnow().replace(year=2020)
        down.save()
        self.conductor_host = [host for host, binary in services
                               if binary == 'nova-conductor'][0]

    def test_request_handling_as_novas(self):
        """Microversions, URL, content type and body, as Nova checks."""
        rows = [
            (body(), {'OpenStack-API-Version': 'compute 9.99'}, None, None,
             406, ['Version 9.99 is not supported by the API']),
            (body(), {'OpenStack-API-Version': 'compute two'}, None, None,
             400, ['API Version String two is of invalid format']),
            (body(), {'OpenStack-API-Version': 'compute 2'}, None, None,
             400, ['invalid format']),
            (body(), {'X-OpenStack-Nova-API-Version': '1.1'}, None, '',
             406, ['Version 1.1 is not supported by the API']),
            (body(), {'X-OpenStack-Nova-API-Version': '3.0'}, None, '',
             406, ['Version 3.0 is not supported']),
            (body(), {}, None, '2.24', 400,
             ['needs compute API microversion 2.25 or later',
              'asked for 2.24']),
            (body(), {}, None, '2.1', 400, ['asked for 2.1']),
            (body(), {}, None, '', 400, ['asked for 2.1']),
            (body(), {}, OTHER_PROJECT, '2.74', 400,
             ['Malformed request URL', OTHER_PROJECT]),
            ('{"%s": {' % ACTION, {}, None, '2.74', 400,
             ['Malformed request body']),
            ({ACTION: {}, 'os-migrateLive': {'host': None}}, {}, None,
             '2.74', 400, ['Malformed request body']),
        ]
        wrong = self.check_refusals(rows, self._send)
        self.assertEqual([], wrong)

    def _send(self, payload, headers, project, microversion):
        return self.post(payload, headers=headers, project=project,
                         microversion=microversion)

    def test_content_type(self):
        # Nova takes text/plain (some web servers' default) as JSON.
        wrong = self.check_refusals(
            [(body(), 'application/xml', 415, ['Unsupported Content-Type']),
             (body(), 'multipart/form-data', 415,
              ['Unsupported Content-Type'])],
            lambda payload, content_type: self.post(
                payload, content_type=content_type))
        self.assertEqual([], wrong)

    def test_bodies(self):
        long_name = 'h' * 10000
        too_many = ['compute2', 'compute3', 'plain1', 'forced1',
                    'disabled1']
        field = "field 'os-migrateLive-multi"
        rows = [
            # count: a JSON integer within limits
            (body(count=2.0), 400, [field + "/count'", '2.0 is not an '
                                    'integer', 'without quotes or decimal']),
            (body(count=1.0), 400, ['1.0 is not an integer']),
            (body(count=0), 400, ['0 is out of range', 'at least 1']),
            (body(count=-1), 400, ['-1 is out of range']),
            (body(count=5), 400, ['at most 4 destinations']),
            (body(count=17), 400, ['at most 4 destinations']),
            (body(count=10 ** 30), 400, ['out of range']),
            (body(count='2'), 400, ['"2" is not an integer']),
            (body(count=True), 400, ['true is not an integer']),
            (body(count=None), 400, ['null is not an integer']),
            (body(count=[2]), 400, ['is not an integer']),
            (body(count={}), 400, ['is not an integer']),
            # destinations: a list of distinct host names within limits
            (body(destinations=[]), 400, ['the list is empty']),
            (body(destinations='compute2'), 400, ['is not a list']),
            (body(destinations=None), 400, ['null is not a list']),
            (body(destinations={'compute2': 1}), 400, ['is not a list']),
            (body(destinations=[2]), 400, ['2 is not a string']),
            (body(destinations=[None]), 400, ['is not a string']),
            (body(destinations=['']), 400, ['cannot be empty']),
            (body(destinations=['bad host']), 400,
             ['"bad host" is not a host name']),
            (body(destinations=['compute2/..']), 400,
             ['is not a host name']),
            (body(destinations=['comp\u00fcte2']), 400,
             ['is not a host name']),
            (body(destinations=['h' * 256]), 400,
             ['256 characters is too long (at most 255)']),
            (body(destinations=[long_name]), 400,
             ['10000 characters is too long']),
            (body(destinations=['compute2', 'compute2']), 400,
             ['Name each destination host once']),
            (body(destinations=['compute2', 'COMPUTE2']), 400,
             ['"compute2" and "COMPUTE2" are the same host']),
            (body(destinations=too_many), 400,
             ['5 hosts named', 'Name at most 4 destination hosts']),
            (body(destinations=['compute2'], count=1), 400,
             ["either 'destinations' or 'count'"]),
            # booleans are booleans
            (body(warm_up='true'), 400, ['"true" is not true or false']),
            (body(warm_up=1), 400, ['1 is not true or false']),
            (body(warm_up=None), 400, ['null is not true or false']),
            (body(block_migration='maybe'), 400,
             ['"maybe" is not allowed', 'true, false or "auto"']),
            (body(block_migration='True'), 400, ['"True" is not allowed']),
            (body(block_migration=1), 400, ['1 is not allowed']),
            (body(block_migration=None), 400, ['null is not allowed']),
            # no other field
            (body(host='compute2'), 400, ['"host" was unexpected']),
            (body(disk_over_commit=False), 400,
             ['"disk_over_commit" was unexpected']),
            (body(force=True), 400, ['"force" was unexpected']),
            (body(**{'x' * 5000: 1}), 400, ['was unexpected']),
            ({ACTION: None}, 400, ['null is not an object']),
            ({ACTION: []}, 400, ['[] is not an object']),
            ({ACTION: 'compute2'}, 400, ['is not an object']),
            ({ACTION: 2}, 400, ['2 is not an object']),
        ]
        wrong = self.check_refusals(rows, self.post)
        self.assertEqual([], wrong)

    def test_destinations(self):
        source, plain = self.source, self.plain_host
        rows = [
            ([source], 400, ['Destination %s is the host the server runs '
                             'on' % source]),
            (['compute2', source], 400, ['%s is the host' % source]),
            (['nosuchhost'], 404, ['Compute host nosuchhost could not be '
                                   'found']),
            (['compute2', 'nosuchhost'], 404, ['nosuchhost']),
            ([self.conductor_host], 400,
             ['Destination %s is not a compute host: it runs '
              'nova-conductor' % self.conductor_host]),
            ([self.forced_host], 409,
             ['Destination forced1 cannot be used: its compute service is '
              'forced down', 'compute service set --up forced1']),
            ([self.disabled_host], 409,
             ['Destination disabled1 cannot be used: its compute service '
              'is disabled (maintenance;', '--enable disabled1']),
            ([self.down_host], 409,
             ['Destination down1 cannot be used: its compute service is '
              'down (last report 2020-']),
            ([plain], 409,
             ['Destination plain1 cannot be used: it does not run the '
              'multi-destination driver']),
            # Every bad host is named, with the worst status.
            (['compute2', self.forced_host, self.disabled_host], 409,
             ['forced1 cannot be used', 'disabled1 cannot be used']),
            ([self.forced_host, 'nosuchhost', source], 400,
             ['forced1', 'nosuchhost', '%s is the host' % source]),
        ]
        wrong = self.check_refusals(
            rows, lambda hosts: self.post(body(destinations=hosts)))
        self.assertEqual([], wrong)

    def test_who_and_which_server(self):
        member = self.api_fixture.api
        rows = [
            ('member', {}, 403, ['multidest:servers:migrate_live']),
            ('member', {'destinations': ['compute2']}, 403,
             ['multidest:servers:migrate_live:host']),
            ('unknown server', {}, 404, ['could not be found']),
        ]

        def send(who, args):
            if who == 'member':
                response = member.api_post(
                    '/servers/%s/action' % self.server['id'],
                    {ACTION: args}, check_response_status=[403])
                return response.status, response.body['forbidden'][
                    'message']
            return self.post(body(**args), server_id=self.new_uuid())

        member.microversion = '2.74'
        self.assertEqual([], self.check_refusals(rows, send))

    def test_migration_ids(self):
        """Ids no Migration record can have: 404, never a 500."""
        def send(method, path, payload):
            response = self.admin_api.api_request(
                '/servers/%s/migrations/%s' % (self.server['id'], path),
                method=method, body=payload and json.dumps(payload),
                headers={'Content-Type': 'application/json'})
            [fault] = response.json().values()
            return response.status_code, fault['message']

        huge = str(10 ** 30)
        rows = [
            ('DELETE', huge, None, 404, ['migration ids are at most']),
            ('GET', huge, None, 404, ['could not be found']),
            ('POST', huge + '/action', {'force_complete': None}, 404,
             ['could not be found']),
            ('DELETE', '2147483648', None, 404, ['could not be found']),
        ]
        self.assertEqual([], self.check_refusals(rows, send))

    def test_flavor_extra_specs_set_before_validation(self):
        """Specs Nova did not validate (microversion < 2.86) are refused."""
        rows = [
            ({'multidest:destinations': 'two'}, {}, 400,
             ['multidest:destinations="two"', 'a whole number from 1 to 16',
              'Flavor ']),
            ({'multidest:destinations': '0'}, {}, 400,
             ['multidest:destinations="0"']),
            ({'multidest:destinations': '17'}, {}, 400,
             ['multidest:destinations="17"']),
            ({'multidest:destinations': '2.0'}, {}, 400,
             ['multidest:destinations="2.0"']),
            ({'multidest:topology': 'ring'}, {'count': 2}, 400,
             ['multidest:topology="ring"', 'star or chain']),
            ({'multidest:topology': 'ring'}, {'destinations': ['compute2']},
             400, ['multidest:topology="ring"']),
            ({'multidest:destination': '2'}, {}, 400,
             ['multidest:destination="2"', 'multidest:destinations']),
        ]

        def send(specs, args):
            self.set_embedded_extra_specs(specs)
            return self.post(body(**args))

        wrong = self.check_refusals(rows, send)
        self.assertEqual([], wrong)

    def set_embedded_extra_specs(self, specs):
        """The server's copy of its flavor, as one set without validation.

        A server keeps its flavor's extra specs of boot time; setting the
        flavor's with microversion 2.85 and resizing would give the same.
        """
        instance = self.get_instance(self.server['id'])
        instance.flavor.extra_specs = dict(specs)
        instance.save()


class TestCliRefusals(test_cli.CliMixin, RefusalTestBase):
    """The client's own refusals, and the API's as the client shows them."""

    def test_cli(self):
        server = self.server['id']
        rows = [
            # The client's own: nothing reaches the API.
            (['--destinations', '0'], 1,
             ['--destinations needs --multi-destination']),
            (['--destinations', '2'], 1, ['needs --multi-destination']),
            (['--destination', 'compute2'], 1,
             ['--destination needs --multi-destination']),
            (['--warm-up'], 1, ['--warm-up needs --multi-destination']),
            (['--multi-destination', '--destinations', '0'], 1,
             ['--destinations must be at least 1 (got 0)']),
            (['--multi-destination', '--destinations', '-3'], 1,
             ['at least 1 (got -3)']),
            (['--multi-destination', '--destinations', 'two'], 2,
             ["invalid int value: 'two'"]),
            (['--multi-destination', '--destination', 'h' * 10000], 1,
             ['a host name of 10000 characters is too long']),
            (['--multi-destination', '--destination', 'bad host'], 1,
             ["'bad host' is not a host name"]),
            (['--multi-destination', '--destination', 'compute2',
              '--destinations', '2'], 1, ['not both']),
            (['--multi-destination', '--host', 'compute2'], 1,
             ['Use --destination']),
            # The API's, as the client reports them.
            (['--multi-destination', '--destination', self.source], 1,
             ['refused (HTTP 400)', 'is the host the server runs on']),
            (['--multi-destination', '--destination', 'nosuchhost'], 1,
             ['refused (HTTP 404)', 'nosuchhost could not be found']),
            (['--multi-destination', '--destination', self.plain_host], 1,
             ['refused (HTTP 409)', 'multi-destination driver']),
            (['--multi-destination', '--destination', 'compute2',
              '--destination', 'compute2'], 1,
             ['refused (HTTP 400)', 'Name each destination host once']),
            (['--multi-destination', '--destinations', '99'], 1,
             ['refused (HTTP 400)', 'at most 4 destinations']),
        ]

        def send(options):
            code, out, err = self.openstack(
                'server', 'migrate', *(options + [server]))
            return code, err + out

        # argparse's refusal prints the command's whole usage.
        wrong = self.check_refusals(rows, send, longest=3000)
        self.assertEqual([], wrong)


class TestConductorRefusals(base.MultiDestMigrationTestBase):
    """What reaches nova-multidest-conductor unchecked ends at once.

    Flavor extra specs recorded before their validator existed, and other
    RPC callers' arguments: the server stays ACTIVE where it was, with no
    Migration record or allocation, and the action says why.
    """

    COMPUTES = 3

    def setUp(self):
        super().setUp()
        self.source = self.hostnames[0]
        self.server = self.boot_server(host=self.source)

    def refused_at_conductor(self, fragment, **args):
        request_id = self.cast_to_conductor(self.server, **args)
        result = self.wait_for_group_end(self.server)
        self.assertEqual('failed', result['result'])
        self.assertEqual([], list(self.get_migrations(self.server['id'])))
        self.assert_invariants(self.server, self.source)
        self.admin_api.microversion = '2.84'
        action = self.admin_api.get_instance_action_details(
            self.server['id'], request_id)
        [event] = action['events']
        self.assertEqual('Error', event['result'])
        self.assertIn(fragment, event['details'])
        self.admin_api.microversion = '2.74'

    def test_float_count(self):
        self.refused_at_conductor('count must be a whole number',
                                  count=2.0)

    def test_invalid_extra_specs(self):
        instance = self.get_instance(self.server['id'])
        for specs, args in (({'multidest:destinations': 'two'}, {}),
                            ({'multidest:topology': 'ring'},
                             {'destinations': self.hostnames[1:]})):
            instance.flavor.extra_specs = specs
            instance.save()
            self.refused_at_conductor(
                'has an invalid extra spec %s=' % list(specs)[0], **args)
