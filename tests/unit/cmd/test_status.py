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
"""The upgrade checks that read only this host's configuration and files.

Checks that ask Nova's records and the computes are in
tests/functional/test_status.py.
"""

import os
import shutil
import subprocess

import fixtures
from oslo_upgradecheck import upgradecheck

from nova_multidest.cmd import status
from nova_multidest.virt import migration_settings
from tests import base

Code = upgradecheck.Code
PASTE = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir,
                     os.pardir, 'etc', 'api-paste.ini')


class TestPorts(base.TestCase):

    def test_success(self):
        self.flags(port_min=49300, port_max=49399)
        result = status.UpgradeChecks()._check_ports()
        self.assertEqual(Code.SUCCESS, result.code)
        self.assertIn('49300..49399', result.details)

    def test_empty_range_fails(self):
        self.flags(port_min=49400, port_max=49300)
        result = status.UpgradeChecks()._check_ports()
        self.assertEqual(Code.FAILURE, result.code)
        self.assertIn('port_min (49400) is above port_max (49300)',
                      result.details)

    def test_range_smaller_than_max_destinations_warns(self):
        self.flags(port_min=49300, port_max=49300, max_destinations=3)
        result = status.UpgradeChecks()._check_ports()
        self.assertEqual(Code.WARNING, result.code)
        self.assertIn('has 1 ports, fewer than max_destinations (3)',
                      result.details)


class TestTls(base.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.cert = os.path.join(self.dir, 'cert.pem')
        self.key = os.path.join(self.dir, 'key.pem')
        subprocess.run(
            ['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
             '-keyout', self.key, '-out', self.cert, '-days', '1',
             '-subj', '/CN=localhost'], check=True, capture_output=True)

    def test_off_is_success(self):
        self.flags(tls=False)
        self.assertEqual(Code.SUCCESS,
                         status.UpgradeChecks()._check_tls().code)

    def test_files_that_load_are_success(self):
        self.flags(tls=True, tls_cert_file=self.cert, tls_key_file=self.key,
                   tls_ca_file=self.cert)
        self.assertEqual(Code.SUCCESS,
                         status.UpgradeChecks()._check_tls().code)

    def test_missing_option_and_unreadable_file_fail(self):
        missing = os.path.join(self.dir, 'nope.pem')
        self.flags(tls=True, tls_cert_file=self.cert, tls_key_file=missing,
                   tls_ca_file=None)
        result = status.UpgradeChecks()._check_tls()
        self.assertEqual(Code.FAILURE, result.code)
        self.assertIn('tls_key_file = %s cannot be read' % missing,
                      result.details)
        self.assertIn('tls_ca_file = %s cannot be read' % os.path.join(
            migration_settings.QEMU_X509_DIR, 'ca-cert.pem'), result.details)

    def test_nova_native_tls_turns_it_on(self):
        self.flags(live_migration_with_native_tls=True, group='libvirt')
        self.flags(tls_cert_file=self.cert, tls_key_file=self.key,
                   tls_ca_file=self.cert)
        result = status.UpgradeChecks()._check_tls()
        self.assertEqual((Code.SUCCESS, 'TLS files load.'),
                         (result.code, result.details))

    def test_files_that_do_not_load_fail(self):
        self.flags(tls=True, tls_cert_file=self.key, tls_key_file=self.key,
                   tls_ca_file=self.cert)
        result = status.UpgradeChecks()._check_tls()
        self.assertEqual(Code.FAILURE, result.code)
        self.assertIn('TLS files do not load', result.details)


class TestApiFilter(base.TestCase):

    def _paste(self, text=None):
        path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                            'api-paste.ini')
        if text is None:
            shutil.copy(PASTE, path)
        else:
            with open(path, 'w') as f:
                f.write(text)
        self.flags(group='wsgi', api_paste_config=path)
        return path

    def test_our_sample_is_success(self):
        path = self._paste()
        result = status.UpgradeChecks()._check_api_filter()
        self.assertEqual(Code.SUCCESS, result.code, result.details)
        self.assertIn(path, result.details)

    def test_pipeline_without_the_filter_fails(self):
        with open(PASTE) as f:
            text = f.read().replace('keystonecontext multidest',
                                    'keystonecontext')
        path = self._paste(text)
        result = status.UpgradeChecks()._check_api_filter()
        self.assertEqual(Code.FAILURE, result.code)
        self.assertIn('%s lacks the multidest filter' % path, result.details)

    def test_no_paste_file_here_warns(self):
        self.flags(group='wsgi', api_paste_config=os.path.join(
            self.useFixture(fixtures.TempDir()).path, 'api-paste.ini'))
        result = status.UpgradeChecks()._check_api_filter()
        self.assertEqual(Code.WARNING, result.code)
        self.assertIn('run this check where nova-api runs', result.details)
