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

"""Scenario 11: a server with a local disk, copied to three destinations.

Every host gets its own instances_path for the scenario (the lab's hosts
switch to a local directory and back, see ``Cloud.set_instances_storage``),
so that Nova sees non-shared storage and the server's image-backed qcow2
disk must be copied: ``--block-migration``. Before the migration, the
source QEMU writes data into the disk's top image through its own block
layer (HMP ``qemu-io``); the copy of that data runs at the lab's
migration bandwidth, which leaves seconds in which one destination's QEMU
is killed, once each destination's Migration shows disk bytes copied and
more to come.
"""

import hashlib
import os
import subprocess
import tempfile
from xml.etree import ElementTree

from nova_multidest import vocabulary
from tools.lab import storage

from tests.lab import base

MiB = 1 << 20
SOURCE = 'host1'
DESTINATIONS = ('host2', 'host3', 'host4')
# Written into the disk before the migration, one pattern byte per chunk,
# so that a chunk landing at the wrong offset changes the digest too.
# About 12 s at the lab's bandwidth; QEMU's mirror copied 48 MiB in its
# first second here, above its speed limit, so the copy must be longer.
CHUNK = 8 * MiB
CHUNKS = 24
# Still to copy when the fault lands: two seconds at the lab's bandwidth,
# more than the progress in a Migration record lags behind the copy.
LEFT_AT_FAULT = 32 * MiB


class LocalDiskTest(base.LabTestCase):

    def setUp(self):
        super().setUp()
        for host in self.lab.hosts:
            self.cloud.set_instances_storage(host.name, storage.LOCAL)
            self.addCleanup(self.cloud.set_instances_storage, host.name,
                            storage.SHARED)

    def instance_dir(self, host, server_id):
        """The server's directory in ``host``'s own instances_path."""
        return os.path.join(storage.local_directory(self.lab, host),
                            server_id)

    def in_host(self, host, argv):
        """Run ``argv`` in the host's mount namespace; its output."""
        holder = self.cloud.procs['%s-namespaces' % host].pid
        result = subprocess.run(
            ['nsenter', '--target', str(holder), '--mount'] + argv,
            capture_output=True, text=True, timeout=base.CLI_TIMEOUT)
        if result.returncode:
            self.fail('%s on %s exited %d: %s' % (
                ' '.join(argv), host, result.returncode, result.stderr))
        return result.stdout

    def write_disk(self, host, server_id):
        """Fill the start of the guest's disk, through QEMU's block layer.

        ``qemu-io`` on the disk's virtio device writes as the guest would;
        it reports errors on the monitor and everything else in QEMU's
        log.
        """
        root = ElementTree.fromstring(self.virsh(host, 'dumpxml', server_id))
        disk = root.find("devices/disk[@device='disk']")
        device = '/machine/peripheral/%s/virtio-backend' % (
            disk.find('alias').get('name'))
        for index in range(CHUNKS):
            command = 'write -P 0x%02x %d %d' % (0x10 + index,
                                                 index * CHUNK, CHUNK)
            output = self.virsh(host, 'qemu-monitor-command', server_id,
                                '--hmp', 'qemu-io -d %s "%s"'
                                % (device, command))
            self.assertEqual('', output.strip(), command)

    def disk_digest(self, host, server_id):
        """SHA-256 of the disk as the guest sees it, read on ``host``.

        ``qemu-img`` reads it (without a lock: the guest runs) in the
        host's namespace, where the backing file's path leads to the
        host's own image cache.
        """
        disk = os.path.join(storage.mount_point(self.lab), server_id, 'disk')
        with tempfile.TemporaryDirectory() as scratch:
            raw = os.path.join(scratch, 'disk.raw')
            self.in_host(host, ['qemu-img', 'convert', '-U', '-f', 'qcow2',
                                '-O', 'raw', disk, raw])
            digest = hashlib.sha256()
            with open(raw, 'rb') as f:
                for block in iter(lambda: f.read(4 * MiB), b''):
                    digest.update(block)
        return digest.hexdigest()

    def disk_progress(self, server_id):
        """{destination: (status, disk total, disk processed)}, from Nova."""
        rows = self.sql(
            "SELECT dest_compute, status, disk_total, disk_processed FROM "
            "migrations WHERE instance_uuid = '%s' AND deleted = 0"
            % server_id)
        return {dest: (status, int(total) if total.isdigit() else 0,
                       int(done) if done.isdigit() else 0)
                for dest, status, total, done in rows}

    def wait_copying(self, server_id):
        """Until every destination received disk bytes, with more to come.

        Fails at once if a destination's disk copy is over (or its
        migration ended) before that: the fault could no longer land in
        the middle of the copy.
        """
        def copying():
            progress = self.disk_progress(server_id)
            for dest, (status, total, done) in progress.items():
                if total and total - done < LEFT_AT_FAULT:
                    raise AssertionError(
                        'the disk copy to %s is nearly over before the '
                        'fault: %s' % (dest, progress))
                if status in vocabulary.MigrationStatus.NOVA_FINAL:
                    raise AssertionError('the migration to %s is %s before '
                                         'the fault: %s'
                                         % (dest, status, progress))
            return sorted(dest for dest, (_, total, done) in progress.items()
                          if done) == sorted(DESTINATIONS) and progress
        return base.poll(copying, base.MIGRATION_TIMEOUT,
                         'disk copy of %s under way to %s'
                         % (server_id, ', '.join(DESTINATIONS)))

    def test_destination_killed_mid_copy_another_wins(self):
        server_id = self.boot('lab-local-disk', host=SOURCE)['id']
        self.assertTrue(os.path.isdir(self.instance_dir(SOURCE, server_id)))
        self.write_disk(SOURCE, server_id)
        self.assertGreaterEqual(
            os.path.getsize(os.path.join(self.instance_dir(SOURCE, server_id),
                                         'disk')), CHUNKS * CHUNK)
        digest = self.disk_digest(SOURCE, server_id)

        self.start_migration(server_id, '--block-migration', *[
            option for host in DESTINATIONS
            for option in ('--destination', host)])
        progress = self.wait_copying(server_id)
        for dest in DESTINATIONS:
            self.assertGreaterEqual(progress[dest][1], CHUNKS * CHUNK,
                                    progress)
        victim = DESTINATIONS[0]
        self.kill_qemu(victim, server_id)

        server = self.wait_done(server_id)
        winner = server['OS-EXT-SRV-ATTR:host']
        self.assertIn(winner, DESTINATIONS[1:])
        self.assert_only_on(server_id, winner)
        statuses = self.migration_statuses(server_id)
        self.assertEqual([winner], [host for host, status in statuses.items()
                                    if status == 'completed'], statuses)
        self.assertEqual(digest, self.disk_digest(winner, server_id))
        _, total, done = self.disk_progress(server_id)[winner]
        self.assertGreaterEqual(total, CHUNKS * CHUNK)
        self.assertEqual(total, done)
        for node in self.lab.hosts:
            self.assertEqual(node.name == winner, os.path.isdir(
                self.instance_dir(node.name, server_id)), node.name)
