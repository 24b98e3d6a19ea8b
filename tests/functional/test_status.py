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
"""nova-multidest-status upgrade check against Nova's records and computes.

The checks that read only configuration and files are unit tests
(tests/unit/cmd/test_status.py).
"""

import fixtures
import oslo_messaging as messaging
from oslo_upgradecheck import upgradecheck

from nova_multidest.cmd import status
from nova_multidest import vocabulary
from tests.functional import base

Code = upgradecheck.Code


class UpgradeCheckTest(base.MultiDestTestBase):

    COMPUTES = 2

    def setUp(self):
        super().setUp()
        self.flags(status_probe_timeout=2, group='multidest')
        self.checks = status.UpgradeChecks()

    def test_everything_up_and_current(self):
        self.start_multidest_conductor()
        conductor = self.checks._check_conductor()
        self.assertEqual(Code.SUCCESS, conductor.code, conductor.details)
        computes = self.checks._check_computes()
        self.assertEqual(Code.SUCCESS, computes.code, computes.details)
        self.assertIn('(compute1, compute2) serves compute RPC 1.3',
                      computes.details)
        groups = self.checks._check_groups()
        self.assertEqual(Code.SUCCESS, groups.code, groups.details)

    def test_one_round_needs_no_probe(self):
        result = self.checks._check_rounds()
        self.assertEqual(Code.SUCCESS, result.code, result.details)
        self.assertIn('max_rounds is 1', result.details)

    def test_retry_rounds_on_emulated_computes_warn(self):
        self.flags(max_rounds=2, group='multidest')
        self.flags(virt_type='kvm', group='libvirt')
        result = self.checks._check_rounds()
        self.assertEqual(Code.SUCCESS, result.code, result.details)
        self.assertIn('max_rounds is 2 and no nova-compute', result.details)

        # The computes answer ping() with their own [libvirt] virt_type.
        self.flags(virt_type='qemu', group='libvirt')
        result = status.UpgradeChecks()._check_rounds()
        self.assertEqual(Code.WARNING, result.code, result.details)
        self.assertIn('max_rounds is 2 and nova-compute on compute1, '
                      'compute2 runs guests under QEMU without KVM',
                      result.details)
        self.assertIn('Set max_rounds = 1 in the nova.conf of '
                      'nova-multidest-conductor', result.details)

    def test_no_conductor_and_a_compute_without_the_driver(self):
        self.flags(compute_driver='libvirt.LibvirtDriver')
        self.start_compute(hostname='plain')
        conductor = self.checks._check_conductor()
        self.assertEqual(Code.FAILURE, conductor.code)
        self.assertIn('No nova-multidest-conductor is up', conductor.details)
        computes = self.checks._check_computes()
        self.assertEqual(Code.WARNING, computes.code)
        self.assertIn("nova-compute on plain is up but does not answer on "
                      "topic 'nova-multidest-compute'", computes.details)
        self.assertNotIn('compute1', computes.details)

    def test_no_compute_runs_the_driver_fails(self):
        def no_answer(*args):
            raise messaging.MessagingTimeout('no answer')

        self.useFixture(fixtures.MonkeyPatch(
            'nova_multidest.compute.rpcapi.ComputeAPI.ping', no_answer))
        computes = self.checks._check_computes()
        self.assertEqual(Code.FAILURE, computes.code)
        for host in ('compute1', 'compute2'):
            self.assertIn('nova-compute on %s is up but does not answer'
                          % host, computes.details)

    def test_computes_of_the_previous_release_and_a_group_left(self):
        # Computes that serve 1.0, without ping(): the dispatcher answers
        # UnsupportedVersion, as a compute of the previous release does.
        self.useFixture(fixtures.MonkeyPatch(
            'nova_multidest.compute.endpoint.ComputeEndpoint.target',
            messaging.Target(version='1.0')))
        computes = self.checks._check_computes()
        # This release sends start_stream at 1.2 (VERSION_CAP): a 1.0
        # compute is too old for it.
        self.assertEqual(Code.FAILURE, computes.code, computes.details)
        self.assertIn('nova-compute on compute1 serves compute RPC 1.0, '
                      'older than the 1.2 this release sends',
                      computes.details)

        server = self.boot_server(host='compute1')
        instance = self.get_instance(server['id'])
        instance.system_metadata.update({
            vocabulary.SYSMETA_ACTIVE: vocabulary.SYSMETA_ACTIVE_VALUE,
            vocabulary.SYSMETA_PHASE: vocabulary.GroupPhase.STREAMING})
        instance.save()
        groups = self.checks._check_groups()
        self.assertEqual(Code.WARNING, groups.code)
        self.assertIn('Server %s (on compute1) has a multi-destination '
                      'migration in progress (phase streaming)'
                      % server['id'], groups.details)
