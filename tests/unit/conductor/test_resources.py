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

import json
from unittest import mock

from nova import exception as nova_exception
from nova.scheduler.client import report

from nova_multidest.conductor import resources
from tests import base

PROVIDER = 'rp-1'
MIGRATION = 'migration-1'
INSTANCE = 'instance-1'


class _Response(object):

    def __init__(self, status_code, body=None):
        self.status_code = status_code
        self.text = json.dumps(body or {})

    def __bool__(self):
        return self.status_code < 400

    def json(self):
        return json.loads(self.text)


class _Placement(object):
    """The consumer side of Placement: allocations and their generations.

    Enough for Nova's own report client to move a claim: a consumer whose
    allocations become empty is deleted, and a write that names a stale
    generation is refused as Placement refuses it.
    ``before_post`` runs before each write is judged: another process's
    change in that window.
    """

    def __init__(self):
        self.consumers = {}
        self.before_post = None
        self.additional_headers = {}

    def allocate(self, consumer, resources_):
        entry = self.consumers.setdefault(consumer, {'generation': -1})
        entry.update(allocations={PROVIDER: {'resources': resources_}},
                     generation=entry['generation'] + 1,
                     project_id='p', user_id='u')

    def move(self, source, target):
        self.consumers[target] = dict(self.consumers.pop(source))
        self.consumers[target]['generation'] = 0

    def get(self, url, microversion=None, global_request_id=None):
        consumer = self.consumers.get(url.rsplit('/', 1)[-1])
        if consumer is None:
            return _Response(200, {'allocations': {}})
        return _Response(200, {
            'allocations': consumer['allocations'],
            'consumer_generation': consumer['generation'],
            'project_id': consumer['project_id'],
            'user_id': consumer['user_id']})

    def post(self, url, json=None, microversion=None,
             global_request_id=None):
        if self.before_post is not None:
            self.before_post()
        for uuid, wanted in json.items():
            stored = self.consumers.get(uuid)
            generation = stored['generation'] if stored else None
            if wanted['consumer_generation'] != generation:
                return _Response(409, {'errors': [{
                    'code': 'placement.concurrent_update',
                    'detail': 'consumer generation conflict - expected %s '
                              'but got %s' % (wanted['consumer_generation'],
                                              generation)}]})
        for uuid, wanted in json.items():
            if not wanted['allocations']:
                self.consumers.pop(uuid, None)
                continue
            stored = self.consumers.get(uuid)
            self.consumers[uuid] = {
                'allocations': wanted['allocations'],
                'generation': stored['generation'] + 1 if stored else 0,
                'project_id': wanted['project_id'],
                'user_id': wanted['user_id']}
        return _Response(204)


class AdoptClaimTest(base.TestCase):
    """The winner's claim moves through Nova's own report client."""

    def setUp(self):
        super().setUp()
        self.placement = _Placement()
        self.placement.allocate(MIGRATION, {'MEMORY_MB': 512})
        self.report_client = report.SchedulerReportClient(
            adapter=self.placement)
        self.instance = mock.Mock(uuid=INSTANCE)

    def adopt(self):
        return resources.adopt_claim(mock.Mock(global_id='req-1'),
                                     self.report_client, self.instance,
                                     MIGRATION)

    def test_the_claim_becomes_the_instances_allocation(self):
        self.assertTrue(self.adopt())
        self.assertNotIn(MIGRATION, self.placement.consumers)
        self.assertEqual({PROVIDER: {'resources': {'MEMORY_MB': 512}}},
                         self.placement.consumers[INSTANCE]['allocations'])

    def test_a_stale_owner_moving_the_same_claim_first_is_no_failure(self):
        def the_other_owner_moves_it():
            self.placement.before_post = None
            self.placement.move(MIGRATION, INSTANCE)

        self.placement.before_post = the_other_owner_moves_it
        self.assertTrue(self.adopt())
        self.assertNotIn(MIGRATION, self.placement.consumers)
        self.assertIn(INSTANCE, self.placement.consumers)

    def test_a_claim_that_changes_at_every_look_is_raised(self):
        self.placement.allocate(INSTANCE, {'MEMORY_MB': 256})
        posts = []

        def someone_writes_the_instance():
            posts.append(1)
            self.placement.allocate(INSTANCE, {'MEMORY_MB': 256})

        self.placement.before_post = someone_writes_the_instance
        self.assertRaises(nova_exception.AllocationMoveFailed, self.adopt)
        self.assertEqual(3, len(posts))
        self.assertIn(MIGRATION, self.placement.consumers)
