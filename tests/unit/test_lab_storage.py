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

"""Which instances_path a lab host sees: the shared volume or its own."""

import os

import testtools

from tools.lab import storage

PATH = '/lab/instances'
VOLUME = 'lab-instances %s fuse.glusterfs rw,relatime 0 0\n' % PATH
OWN = '/dev/vda %s ext4 rw,relatime 0 0\n' % PATH
ROOT = '/dev/vda / ext4 rw,relatime 0 0\n'


class InstancesStorageKindTest(testtools.TestCase):

    def test_the_volume_alone_is_shared(self):
        self.assertEqual(storage.SHARED,
                         storage.kind_in([ROOT, VOLUME], PATH))

    def test_the_own_directory_over_the_volume_is_local(self):
        self.assertEqual(storage.LOCAL,
                         storage.kind_in([ROOT, VOLUME, OWN], PATH))

    def test_nothing_mounted_there(self):
        self.assertIsNone(storage.kind_in([ROOT], PATH))

    def test_a_process_that_is_gone(self):
        self.assertIsNone(storage.kind(None, PATH))

    def test_this_process_sees_its_root(self):
        self.assertIsNotNone(storage.kind(os.getpid(), '/'))
