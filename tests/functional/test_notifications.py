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
"""The versioned notifications of a group, in order, as listeners get them.

Each payload must also match its documented sample
(doc/notification_samples/): the same object name, version and
namespace, and the same fields.
"""

import json
import os

from nova_multidest import vocabulary
from tests.functional import base

Event = vocabulary.NotificationEvent
SAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir,
                       'doc', 'notification_samples')


def sample(event_type):
    name = event_type[len(Event.PREFIX) + 1:]
    with open(os.path.join(SAMPLES, 'live_migration-%s.json' % name)) as f:
        return json.load(f)


class NotificationTest(base.MultiDestMigrationTestBase):

    COMPUTES = 3

    def setUp(self):
        super().setUp()
        self.source, self.first, self.second = self.hostnames
        self.server = self.boot_server(host=self.source)
        self.notifier.reset()

    def ours(self, last_event):
        """Our notifications, once ``last_event`` was emitted."""
        self.notifier.wait_for_versioned_notifications(last_event)
        found = [n for n in self.notifier.versioned_notifications
                 if n['event_type'].startswith(Event.PREFIX)]
        for notification in found:
            self.assert_matches_sample(notification)
        return found

    def assert_matches_sample(self, notification):
        expected = sample(notification['event_type'])
        self.assertEqual(expected['priority'], notification['priority'])
        self.assertTrue(notification['publisher_id'].startswith(
            vocabulary.CONDUCTOR_BINARY + ':'), notification['publisher_id'])
        payload, documented = notification['payload'], expected['payload']
        for key in ('nova_object.name', 'nova_object.version',
                    'nova_object.namespace'):
            self.assertEqual(documented[key], payload[key], key)
        self.assertEqual(sorted(documented['nova_object.data']),
                         sorted(payload['nova_object.data']))

    def summary(self, notifications):
        """(event, host, outcome) of each, in order."""
        rows = []
        for n in notifications:
            data = n['payload']['nova_object.data']
            self.assertEqual(self.server['id'], data['instance_uuid'])
            self.assertEqual(self.source, data['source_host'])
            self.assertEqual(1, data['round'])
            rows.append((n['event_type'], data.get('host'),
                         data.get('outcome')))
        return rows

    def test_success_with_a_loser_cancelled(self):
        result = self.migrate_and_wait(
            self.server, destinations=[self.first, self.second])
        winner = result['host']
        loser = self.first if winner == self.second else self.second
        found = self.ours(Event.END)
        self.assertEqual([
            (Event.START, None, None),
            (Event.ELECTED, winner, None),
            (Event.DESTINATION, loser, 'cancelled'),
            (Event.DESTINATION, winner, 'completed'),
            (Event.END, winner, None),
        ], self.summary(found))
        start = found[0]['payload']['nova_object.data']
        self.assertEqual([self.first, self.second],
                         start['requested_destinations'])
        lost = found[2]['payload']['nova_object.data']
        self.assertEqual('another destination won', lost['reason'])
        self.assertEqual({loser: 'another destination won'},
                         found[4]['payload']['nova_object.data']['reasons'])

    def test_one_destination_fails(self):
        self.inject_fault(self.first, vocabulary.DestinationPhase.STREAM)
        result = self.migrate_and_wait(
            self.server, destinations=[self.first, self.second])
        self.assertEqual(self.second, result['host'])
        found = self.ours(Event.END)
        self.assertEqual([
            (Event.START, None, None),
            (Event.DESTINATION, self.first, 'failed'),
            (Event.ELECTED, self.second, None),
            (Event.DESTINATION, self.second, 'completed'),
            (Event.END, self.second, None),
        ], self.summary(found))
        reason = found[1]['payload']['nova_object.data']['reason']
        self.assertIn('stream', reason)

    def test_every_destination_fails(self):
        for host in (self.first, self.second):
            self.inject_fault(host, vocabulary.DestinationPhase.STREAM)
        result = self.migrate_and_wait(
            self.server, destinations=[self.first, self.second])
        self.assertEqual('failed', result['result'])
        found = self.ours(Event.ERROR)
        rows = self.summary(found)
        self.assertEqual((Event.START, None, None), rows[0])
        self.assertEqual(
            [(Event.DESTINATION, self.first, 'failed'),
             (Event.DESTINATION, self.second, 'failed')], sorted(rows[1:3]))
        self.assertEqual((Event.ERROR, self.source, None), rows[3])
        self.assertEqual(4, len(rows))
        error = found[3]['payload']['nova_object.data']
        self.assertEqual({self.first, self.second}, set(error['reasons']))
        self.assertIsNone(error['migration_uuid'])

    def test_nothing_without_versioned_notifications(self):
        self.flags(notification_format='unversioned', group='notifications')
        self.migrate_and_wait(self.server,
                              destinations=[self.first, self.second])
        self.assertEqual([], [
            n for n in self.notifier.versioned_notifications
            if n['event_type'].startswith(Event.PREFIX)])

    def test_recovery_after_a_conductor_restart(self):
        waits = self.hold_compute_calls('wait_destination')
        self.request_migration(self.server,
                               destinations=[self.first, self.second])
        waits.wait_reached(2)
        self.restart_multidest_conductor()
        self.wait_for_group_end(self.server)
        waits.lose()
        rows = self.summary(self.ours(Event.ERROR))
        recovery = [n for n in self.notifier.versioned_notifications
                    if n['event_type'] == Event.RECOVERY]
        self.assertEqual(vocabulary.RecoveryAction.ROLLBACK,
                         recovery[0]['payload']['nova_object.data']['action'])
        self.assertEqual(Event.START, rows[0][0])
        self.assertEqual(Event.RECOVERY, rows[1][0])
        self.assertEqual(Event.ERROR, rows[-1][0])
