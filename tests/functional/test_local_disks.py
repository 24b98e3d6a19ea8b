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

"""A server with a local disk, block-migrated to three destinations.

Each compute has its own instances_path (no shared storage), so Nova's
own checks choose a block migration for ``auto`` and accept an explicit
one; each destination's instance directory and disk come from Nova's own
pre-live-migration, the fake hypervisor copies the source's disk file
into them, and Nova's own rollback and post-live-migration remove the
losers' and the source's.
"""

import hashlib
import os

from nova_multidest.compute import rpcapi
from nova_multidest import vocabulary
from tests.functional import base

DISK_BYTES = 3 << 20


def digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


class LocalDiskTest(base.MultiDestMigrationTestBase):

    COMPUTES = 4

    def setUp(self):
        super().setUp()
        self.storage = self.use_local_storage()
        self.source = self.hostnames[0]
        self.destinations = self.hostnames[1:4]
        self.server = self.boot_server(host=self.source)
        self.source_disk = self.write_local_disk(self.server, self.source)
        self.source_digest = digest(self.source_disk)

    def write_local_disk(self, server, host):
        """Write the disk Nova's Raw image backend would have made.

        Nova's harness mocks image creation out: the domain names the
        disk file, but nothing writes it.
        """
        files = self.disk_files(server, host)
        self.assertEqual(['vda'], list(files))
        path = files['vda']
        self.assertEqual(self.storage.instance_dir(host, server['id']),
                         os.path.dirname(path))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as f:
            f.write(os.urandom(DISK_BYTES))
        return path

    def disk_files(self, server, host):
        [domain] = [dom for dom in self.fake_connection(host)._vms.values()
                    if dom.UUIDString() == server['id']]
        return self.fake_hypervisor.disk_files(domain.XMLDesc(0))

    def instance_dir(self, host):
        return self.storage.instance_dir(host, self.server['id'])

    def migrate(self, block_migration):
        self.request_migration(self.server, destinations=self.destinations,
                               block_migration=block_migration)
        return self.wait_for_group_end(self.server)

    def assert_won_with_its_disk(self, result):
        self.assertEqual('completed', result['result'])
        winner = result['host']
        self.assertIn(winner, self.destinations)
        migrations = self.migrations_by_host(self.server['id'])
        self.assertEqual(sorted(self.destinations), sorted(migrations))
        for host, migration in migrations.items():
            self.assertEqual('completed' if host == winner else 'cancelled',
                             migration.status, host)
        # Domain, allocations and bindings only on the winner; no
        # instance directory anywhere else (losers, source).
        self.assert_invariants(self.server, winner)
        self.assertEqual(winner, self.get_instance(self.server['id']).host)

        winner_disk = self.disk_files(self.server, winner)['vda']
        self.assertEqual(os.path.join(self.instance_dir(winner), 'disk'),
                         winner_disk)
        self.assertEqual(self.source_digest, digest(winner_disk))
        for host in self.destinations + [self.source]:
            if host != winner:
                self.assertFalse(os.path.exists(self.instance_dir(host)),
                                 'instance directory left on %s' % host)
        self.assertFalse(os.path.exists(self.source_disk))

        won = migrations[winner]
        # What Nova's API shows as disk_*_bytes while it runs.
        self.assertEqual(DISK_BYTES, won.disk_total)
        self.assertEqual(DISK_BYTES, won.disk_processed)
        self.assertIsNone(won.disk_remaining)
        return winner

    def test_block_migration_to_three_destinations(self):
        self.assert_won_with_its_disk(self.migrate(block_migration=True))

    def test_auto_is_a_block_migration_without_shared_storage(self):
        self.assert_won_with_its_disk(self.migrate(block_migration='auto'))

    def test_every_destination_fails_during_the_disk_copy(self):
        for host in self.destinations:
            self.inject_fault(host, vocabulary.DestinationPhase.STREAM)
        result = self.migrate(block_migration=True)
        self.assertEqual('failed', result['result'])
        self.assertEqual(self.source, result['host'])
        self.assertEqual(sorted(self.destinations), sorted(result['reasons']))
        migrations = self.migrations_by_host(self.server['id'])
        self.assertEqual(sorted(self.destinations), sorted(migrations))
        for host, migration in migrations.items():
            self.assertEqual('failed', migration.status, host)
            # Each died half-way through its copy of the disk.
            self.assertEqual(DISK_BYTES, migration.disk_total, host)
            self.assertLess(0, migration.disk_processed, host)
            self.assertGreater(DISK_BYTES, migration.disk_processed, host)
        self.assert_invariants(self.server, self.source)
        self.assertEqual(self.source_digest, digest(self.source_disk))
        self.assertEqual({'vda': self.source_disk},
                         self.disk_files(self.server, self.source))
        for host in self.destinations:
            self.assertFalse(os.path.exists(self.instance_dir(host)),
                             'instance directory left on %s' % host)

    def test_a_destination_too_old_for_disks_is_left_out(self):
        # A compute of the previous release: its node record says it
        # serves compute RPC 1.2, which copies no disk.
        old = self.destinations[0]
        self.compute_driver(old).multidest_rpc_version = '1.2'
        self.computes[old].manager.update_available_resource(
            self.admin_context())
        self.assertEqual('1.2', rpcapi.host_version(self.admin_context(),
                                                    old))
        result = self.migrate(block_migration=True)
        self.assertEqual('completed', result['result'])
        winner = result['host']
        self.assertIn(winner, self.destinations[1:])
        migrations = self.migrations_by_host(self.server['id'])
        self.assertEqual('failed', migrations[old].status)
        self.assertEqual(DISK_BYTES, migrations[winner].disk_processed)
        self.assert_invariants(self.server, winner)
        self.assertEqual(self.source_digest,
                         digest(self.disk_files(self.server, winner)['vda']))
        self.assertFalse(os.path.exists(self.instance_dir(old)))
        # What `openstack server event show` gives the operator.
        self.admin_api.microversion = '2.84'
        request_id = self.admin_api.api_get(
            '/servers/%s/os-instance-actions' % self.server['id']
        ).body['instanceActions'][0]['request_id']
        events = self.admin_api.get_instance_action_details(
            self.server['id'], request_id)['events']
        [event] = [e for e in events
                   if e['event'] == 'multidest_destination_%s' % old]
        self.assertIn('Host %s serves nova-multidest compute RPC version '
                      '1.2' % old, event['details'])
        self.assertIn('needs version 1.3', event['details'])
