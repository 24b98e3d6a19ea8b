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

"""Multi-destination live migration through Nova, from API to computes.

Four or five computes run MultiDestLibvirtDriver over Nova's fake libvirt
with the fake hypervisor extension; every test ends with the invariants
checker: ACTIVE on exactly the expected host, nothing left anywhere else.
"""

from nova_multidest import vocabulary
from tests.functional import base


class HappyPathTest(base.MultiDestMigrationTestBase):

    COMPUTES = 4

    def setUp(self):
        super().setUp()
        self.source = self.hostnames[0]
        self.server = self.boot_server(
            host=self.source, networks=[{'port': self.neutron.port_1['id']}])

    def assert_group(self, result, hosts):
        migrations = self.migrations_by_host(self.server['id'])
        self.assertEqual(sorted(hosts), sorted(migrations))
        winner = result['host']
        self.assertIn(winner, hosts)
        self.assertEqual('completed', result['result'])
        for host, migration in migrations.items():
            self.assertEqual(self.source, migration.source_compute)
            self.assertEqual('completed' if host == winner else 'cancelled',
                             migration.status, host)
        self.assert_invariants(self.server, winner)
        return winner

    def test_two_explicit_destinations(self):
        hosts = self.hostnames[1:3]
        result = self.migrate_and_wait(self.server, destinations=hosts)
        self.assert_group(result, hosts)

    def test_three_explicit_destinations(self):
        hosts = self.hostnames[1:4]
        result = self.migrate_and_wait(self.server, destinations=hosts)
        self.assert_group(result, hosts)

    def test_two_scheduled_destinations(self):
        result = self.migrate_and_wait(self.server, count=2)
        hosts = list(self.migrations_by_host(self.server['id']))
        self.assertEqual(2, len(hosts))
        self.assertNotIn(self.source, hosts)
        self.assert_group(result, hosts)

    def test_three_scheduled_destinations(self):
        result = self.migrate_and_wait(self.server, count=3)
        self.assert_group(result, self.hostnames[1:4])


class DestinationFailureTest(base.MultiDestMigrationTestBase):
    """One destination fails at one phase; it alone is reverted."""

    COMPUTES = 4

    def setUp(self):
        super().setUp()
        self.source, self.bad, self.good = self.hostnames[:3]
        self.server = self.boot_server(
            host=self.source, networks=[{'port': self.neutron.port_1['id']}])

    def migrate_expecting(self, status_of_bad=('failed',), api=True):
        if api:
            self.request_migration(self.server,
                                   destinations=[self.bad, self.good])
        else:
            self.cast_to_conductor(self.server,
                                   destinations=[self.bad, self.good])
        result = self.wait_for_group_end(self.server)
        self.assertEqual({'result': 'completed', 'host': self.good}, result)
        migrations = self.migrations_by_host(self.server['id'])
        self.assertIn(migrations[self.bad].status, status_of_bad)
        self.assertEqual('completed', migrations[self.good].status)
        self.assert_invariants(self.server, self.good)
        events = self.admin_api.api_get(
            '/servers/%s/os-instance-actions' % self.server['id']
        ).body['instanceActions']
        self.assertEqual('live-migration', events[0]['action'])
        return migrations

    def test_checks_fail_host_down(self):
        """A host forced down after nova-api checked it fails alone."""
        service = self.admin_api.get_services(
            binary='nova-compute', host=self.bad)[0]
        self.admin_api.api_put('/os-services/%s' % service['id'],
                               {'forced_down': True})
        self.admin_api.microversion = '2.74'
        migrations = self.migrate_expecting(api=False)
        self.admin_api.microversion = '2.84'
        event = self.admin_api.get_instance_action_details(
            self.server['id'], self.last_request_id())
        [bad_event] = [e for e in event['events']
                       if e['event'] == 'multidest_destination_%s' %
                       self.bad]
        # The conductor's own check says why, not the scheduler's "no
        # valid host".
        self.assertIn('checks: Destination host %s cannot be used: its '
                      'compute service is forced down' % self.bad,
                      bad_event['details'])
        self.assertEqual('failed', migrations[self.bad].status)

    def last_request_id(self):
        return self.admin_api.api_get(
            '/servers/%s/os-instance-actions' % self.server['id']
        ).body['instanceActions'][0]['request_id']

    def test_claim_fails_no_capacity(self):
        total = self._get_provider_inventory(
            self.compute_rp_uuids[self.bad])['MEMORY_MB']['total']
        self._reserve_placement_resource(self.bad, 'MEMORY_MB', total)
        self.migrate_expecting()
        self.assertEqual({}, self.placement.get(
            '/resource_providers/%s/allocations' %
            self.compute_rp_uuids[self.bad]).body['allocations'])

    def test_prepare_fails(self):
        self.inject_fault(self.bad, vocabulary.DestinationPhase.PREPARE)
        self.migrate_expecting()

    def test_stream_fails(self):
        self.inject_fault(self.bad, vocabulary.DestinationPhase.STREAM)
        self.migrate_expecting()

    def test_complete_fails(self):
        # Both reach the end of the stream together: the bad one is either
        # reported failed first or cancelled once the good one won.
        self.inject_fault(self.bad, vocabulary.DestinationPhase.COMPLETE)
        self.migrate_expecting(status_of_bad=('failed', 'cancelled'))

    def test_elected_winner_fails_before_its_guest_ran(self):
        # The bad host completes first and is elected; it cannot resume,
        # so the good one, held until then, must win.
        self.inject_fault(self.bad, vocabulary.DestinationPhase.RESUME)
        gate = self.hold_compute_calls('wait_destination', host=self.good)
        resumes = self.hold_compute_calls('resume_destination',
                                          host=self.bad)
        self.request_migration(self.server,
                               destinations=[self.bad, self.good])
        resumes.wait_reached()
        resumes.release()
        gate.release()
        self.wait_for_group_end(self.server)
        migrations = self.migrations_by_host(self.server['id'])
        self.assertEqual('failed', migrations[self.bad].status)
        self.assertEqual('completed', migrations[self.good].status)
        self.assert_invariants(self.server, self.good)


class AllFailTest(base.MultiDestMigrationTestBase):

    COMPUTES = 4

    def test_all_destinations_fail(self):
        source = self.hostnames[0]
        server = self.boot_server(
            host=source, networks=[{'port': self.neutron.port_1['id']}])
        for host in self.hostnames[1:]:
            self.inject_fault(host, vocabulary.DestinationPhase.STREAM)
        result = self.migrate_and_wait(server, count=3)
        self.assertEqual('failed', result['result'])
        self.assertEqual(source, result['host'])
        migrations = self.get_migrations(server['id'])
        self.assertEqual(3, len(migrations))
        self.assertEqual({'failed'}, {m.status for m in migrations})
        self.assert_invariants(server, source)
        fault = self.admin_api.get_server(server['id']).get('fault')
        self.assertIsNone(fault)  # an ACTIVE server shows no fault
        faults = self.get_instance_faults(server['id'])
        self.assertIn('Every destination failed', faults[0].message)

    def test_second_round_on_other_hosts(self):
        self.flags(max_rounds=2, group='multidest')
        source, first = self.hostnames[:2]
        server = self.boot_server(host=source)
        self.inject_fault(first, vocabulary.DestinationPhase.PREPARE)
        result = self.migrate_and_wait(server, destinations=[first])
        self.assertEqual('completed', result['result'])
        winner = result['host']
        self.assertNotIn(winner, (source, first))
        migrations = self.migrations_by_host(server['id'])
        self.assertEqual({first, winner}, set(migrations))
        self.assertEqual('failed', migrations[first].status)
        self.assertEqual('completed', migrations[winner].status)
        self.assert_invariants(server, winner)


class CrashTest(base.MultiDestMigrationTestBase):
    """Conductor and compute restarts mid-operation."""

    COMPUTES = 4

    def setUp(self):
        super().setUp()
        self.source = self.hostnames[0]
        self.targets = self.hostnames[1:3]
        self.server = self.boot_server(
            host=self.source, networks=[{'port': self.neutron.port_1['id']}])

    def test_conductor_restart_while_streaming_rolls_back(self):
        waits = self.hold_compute_calls('wait_destination')
        self.request_migration(self.server, destinations=self.targets)
        waits.wait_reached(2)
        self.restart_multidest_conductor()
        result = self.wait_for_group_end(self.server)
        waits.lose()
        self.assertEqual('failed', result['result'])
        self.assertEqual(
            {'failed'},
            {m.status for m in self.get_migrations(self.server['id'])})
        self.assert_invariants(self.server, self.source)

    def test_conductor_restart_after_election_finishes(self):
        self._attach_volume(self.server, self.cinder.SWAP_OLD_VOL)
        [source_attachment] = self.cinder.attachment_ids_for_instance(
            self.server['id'])
        resumes = self.hold_compute_calls('resume_destination', limit=1)
        self.request_migration(self.server, destinations=self.targets)
        resumes.wait_reached()
        winner_uuid = self.get_instance(
            self.server['id']).system_metadata[vocabulary.SYSMETA_WINNER]
        self.restart_multidest_conductor()
        result = self.wait_for_group_end(self.server)
        resumes.lose()
        migrations = {m.uuid: m for m in self.get_migrations(
            self.server['id'])}
        winner = migrations[winner_uuid]
        self.assertEqual({'result': 'completed', 'host': winner.dest_compute},
                         result)
        self.assertEqual('completed', winner.status)
        self.assert_invariants(self.server, winner.dest_compute)
        self.assertNotIn(source_attachment,
                         self.cinder.attachment_ids_for_instance(
                             self.server['id']))

    def test_destination_compute_restart_mid_stream(self):
        lost, kept = self.targets
        waits = self.hold_compute_calls('wait_destination', host=lost)
        self.request_migration(self.server, destinations=self.targets)
        waits.wait_reached()
        self.restart_compute_service(lost)
        waits.release()
        result = self.wait_for_group_end(self.server)
        self.assertEqual({'result': 'completed', 'host': kept}, result)
        self.assert_invariants(self.server, kept)

    def test_second_request_refused_while_running(self):
        waits = self.hold_compute_calls('wait_destination')
        self.request_migration(self.server, destinations=self.targets)
        waits.wait_reached()
        response = self.request_migration(
            self.server, status=409, destinations=[self.hostnames[3]])
        message = response.body['conflictingRequest']['message']
        self.assertIn('already being live migrated to several '
                      'destinations (request req-', message)
        self.assertIn('openstack server migration list --server %s' %
                      self.server['id'], message)
        waits.release()
        result = self.wait_for_group_end(self.server)
        self.assertEqual(2, len(self.get_migrations(self.server['id'])))
        self.assert_invariants(self.server, result['host'])


class VolumeAndPortsTest(base.MultiDestMigrationTestBase):

    COMPUTES = 4

    def test_server_with_volume_and_ports(self):
        source = self.hostnames[0]
        server = self.boot_server(
            host=source, networks=[{'port': self.neutron.port_1['id']}])
        volume_id = self.cinder.SWAP_OLD_VOL
        self._attach_volume(server, volume_id)
        self.assert_invariants(server, source)
        [source_attachment] = self.cinder.attachment_ids_for_instance(
            server['id'])
        result = self.migrate_and_wait(server, count=3)
        self.assertEqual('completed', result['result'])
        self.assert_invariants(server, result['host'])
        self.assertNotIn(source_attachment,
                         self.cinder.attachment_ids_for_instance(server['id']))
        self.assertEqual([volume_id], list(
            self.cinder.volume_ids_for_instance(server['id'])))


class ServiceAndSpreadTest(base.MultiDestMigrationTestBase):

    COMPUTES = 4

    def test_conductor_is_a_nova_service(self):
        [service] = self.admin_api.get_services(
            binary=vocabulary.CONDUCTOR_BINARY)
        self.assertEqual('up', service['state'])
        self.assertEqual('enabled', service['status'])

    def test_scheduled_destinations_spread_over_zones(self):
        self.flags(spread='availability_zone', group='multidest')
        source, same_a, same_b, other = self.hostnames
        for name, zone, hosts in (('agg-a', 'az-a', (same_a, same_b)),
                                  ('agg-b', 'az-b', (other,))):
            aggregate = self._create_aggregate(name, availability_zone=zone)
            for host in hosts:
                self.admin_api.add_host_to_aggregate(aggregate, host)
        # With a server already there, the weighers rank the lone host of
        # az-b last: only the spread can bring it in.
        self.boot_server(host=other)
        server = self.boot_server(host=source)
        result = self.migrate_and_wait(server, count=2)
        hosts = set(self.migrations_by_host(server['id']))
        self.assertEqual(2, len(hosts))
        self.assertIn(other, hosts)
        self.assert_invariants(server, result['host'])


class SourceRestartTest(base.MultiDestMigrationTestBase):

    COMPUTES = 4

    def test_source_compute_restart_mid_operation(self):
        source = self.hostnames[0]
        server = self.boot_server(
            host=source, networks=[{'port': self.neutron.port_1['id']}])
        waits = self.hold_compute_calls('wait_destination')
        self.request_migration(server, destinations=self.hostnames[1:3])
        waits.wait_reached(2)
        self.restart_compute_service(source)
        waits.release()
        result = self.wait_for_group_end(server)
        self.assert_invariants(server, result['host'])
