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

"""Nova's own migration APIs on a multi-destination group.

``openstack server migration list/show/force complete/abort`` call Nova's
server-migrations API, which knows nothing of groups: these tests prove
that our records satisfy its checks and that its casts to the source
compute switch over or abort the whole group.
"""

import threading

import fixtures

from nova_multidest.compute import rpcapi as compute_rpcapi
from tests.functional import base


class GroupMigrationsTest(base.MultiDestMigrationTestBase):

    COMPUTES = 3

    def setUp(self):
        super().setUp()
        self.admin_api.microversion = '2.80'
        self.source = self.hostnames[0]
        self.destinations = self.hostnames[1:]
        self.server = self.boot_server(
            host=self.source, networks=[{'port': self.neutron.port_1['id']}])

    def start_warm_up(self):
        """Start a warm-up group; return its Migrations once all stream."""
        self.request_migration(self.server, destinations=self.destinations,
                               warm_up=True)
        return base.wait_until(
            self._all_running, timeout=60,
            message='destinations of %s never all ran' % self.server['id'])

    def _all_running(self):
        migrations = self.admin_api.api_get(
            '/servers/%s/migrations' % self.server['id']).body['migrations']
        if (len(migrations) == len(self.destinations) and
                all(m['status'] == 'running' for m in migrations)):
            return migrations
        return None

    def _with_progress(self, url):
        shown = self.admin_api.api_get(url).body['migration']
        return shown if shown['memory_total_bytes'] else None

    def test_list_and_show_every_destination(self):
        migrations = self.start_warm_up()

        self.assertEqual(sorted(self.destinations),
                         sorted(m['dest_compute'] for m in migrations))
        for listed in migrations:
            url = '/servers/%s/migrations/%d' % (self.server['id'],
                                                 listed['id'])
            # The source records progress at most once a second.
            shown = base.wait_until(
                lambda: self._with_progress(url),
                message='no progress recorded for %s' % url)
            self.assertEqual(listed['uuid'], shown['uuid'])
            self.assertEqual(self.source, shown['source_compute'])
            self.assertGreater(shown['memory_total_bytes'], 0)
        # Clean end for the invariants: give up the group.
        self.admin_api.delete_migration(self.server['id'],
                                        migrations[0]['id'])
        self.wait_for_group_end(self.server)
        self.assert_invariants(self.server, self.source)

    def test_force_complete_switches_over(self):
        migrations = self.start_warm_up()

        self.admin_api.force_complete_migration(self.server['id'],
                                                migrations[-1]['id'])

        result = self.wait_for_group_end(self.server)
        self.assertEqual('completed', result['result'])
        self.assertIn(result['host'], self.destinations)
        self.assert_invariants(self.server, result['host'])
        actions = [a['action'] for a in
                   self.admin_api.get_instance_actions(self.server['id'])]
        self.assertIn('live_migration_force_complete', actions)

    def test_abort_keeps_the_server_on_its_source(self):
        migrations = self.start_warm_up()

        self.admin_api.delete_migration(self.server['id'],
                                        migrations[0]['id'])

        result = self.wait_for_group_end(self.server)
        self.assertNotEqual('completed', result.get('result'))
        self.assert_invariants(self.server, self.source)
        statuses = {m.dest_compute: m.status
                    for m in self.get_migrations(self.server['id'])}
        self.assertEqual(set(self.destinations), set(statuses))
        self.assertNotIn('completed', statuses.values())

    def test_abort_while_preparing_is_refused(self):
        """Nova's compute would drop it silently: the API says why."""
        release = threading.Event()
        self.addCleanup(release.set)
        prepare = compute_rpcapi.ComputeAPI.prepare_destination

        def held_prepare(api, *args, **kwargs):
            release.wait(60)
            return prepare(api, *args, **kwargs)

        self.useFixture(fixtures.MonkeyPatch(
            'nova_multidest.compute.rpcapi.ComputeAPI.prepare_destination',
            held_prepare))
        self.request_migration(self.server, destinations=self.destinations)
        preparing = base.wait_until(
            lambda: [m for m in self.get_migrations(self.server['id'])
                     if m.status == 'preparing'],
            timeout=60, message='no destination reached preparing')

        response = self.admin_api.api_delete(
            '/servers/%s/migrations/%d' % (self.server['id'],
                                           preparing[0].id),
            check_response_status=[400])

        self.assertIn('still being prepared',
                      response.body['badRequest']['message'])
        release.set()
        result = self.wait_for_group_end(self.server)
        self.assertEqual('completed', result['result'])
        self.assert_invariants(self.server, result['host'])
