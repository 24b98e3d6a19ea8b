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

"""Scenarios 2, 3 and 9: migrations that succeed.

A server booted on host1 moves to the other hosts: with named
destinations, with destinations the scheduler picks, and with Nova's own
live migration, which hosts running MultiDestLibvirtDriver still do.
"""

from tests.lab import base

SOURCE = 'host1'
OTHERS = ('host2', 'host3', 'host4')


class MultiDestinationTest(base.LabTestCase):

    def migrate(self, server_id, *options):
        return self.openstack('server', 'migrate', '--multi-destination',
                              *options, '--wait', server_id)

    def assert_one_winner(self, server_id, result, destinations):
        winner = self.show(server_id)['OS-EXT-SRV-ATTR:host']
        self.assertIn(winner, destinations)
        self.assertIn('now runs on %s.' % winner, result.stdout)
        self.assert_only_on(server_id, winner)
        migrations = self.migrations(server_id)
        self.assertEqual(sorted(destinations),
                         sorted(m['dest'] for m in migrations))
        self.assertEqual({SOURCE}, {m['source'] for m in migrations})
        self.assertEqual(
            [winner], [m['dest'] for m in migrations
                       if m['status'] == 'completed'])
        return winner

    def test_named_destinations(self):
        server = self.boot('lab-named', host=SOURCE)
        result = self.migrate(server['id'], *[
            option for host in OTHERS for option in ('--destination', host)])
        self.assert_one_winner(server['id'], result, OTHERS)

    def test_scheduled_destinations(self):
        server = self.boot('lab-scheduled', host=SOURCE)
        result = self.migrate(server['id'], '--destinations', '3')
        self.assert_one_winner(server['id'], result, OTHERS)


class NovaLiveMigrationTest(base.LabTestCase):

    def test_nova_live_migration_still_works(self):
        server = self.boot('lab-nova', host=SOURCE)
        result = self.openstack(
            '--os-compute-api-version', '2.30', 'server', 'migrate',
            '--live-migration', '--host', 'host2', '--wait', server['id'],
            check=False)
        if result.returncode:
            self.fail('Nova\'s live migration failed: %s\n%s' % (
                result.stderr, self.action_details(server['id'],
                                                   'live-migration')))
        self.assert_only_on(server['id'], 'host2')
        self.assertEqual(
            [('host1', 'host2', 'completed')],
            [(m['source'], m['dest'], m['status'])
             for m in self.migrations(server['id'])])
