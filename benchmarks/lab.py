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

"""Benchmark: multi-destination migration against Nova's own, in the lab.

One server of the lab (``tools/run lab``) is migrated back and forth,
interleaved so that the machine's load hits both kinds alike:

* ``nova``: Nova's own live migration (``os-migrateLive`` with a host),
  the path ``openstack server migrate --live-migration --host`` takes;
* ``multidest N=...``: ``os-migrateLive-multi`` to N named destinations.

Request to ACTIVE: from the API request to the moment Nova's database
shows the server ACTIVE, with no task, on another host. Downtime: from the
source QEMU's STOP event to the RESUME event of the QEMU the server ends
on, with QEMU's own timestamps, through each host's libvirtd (the events
of ``benchmarks/libvirt_migration.py``). The guest's own counter cannot
time it: libvirt refuses monitor commands on a domain while its migration
job runs, as it does for Nova's own migration.

Both kinds run under the lab's one migration bandwidth
(``tools/lab/config.py``). A lab that is not running is started, and
stopped again at the end.

    tools/run bench lab [--repetitions 3] [--destinations 3 ...]
"""

import argparse
import os
import statistics
import sys
import time

import libvirt
import pymysql

from benchmarks import libvirt_migration
from benchmarks import results
from nova_multidest import vocabulary
from tools.lab import cloud as cloud_mod
from tools.lab import layout
from tools.lab import libvirtd
from tools.lab import resources

TIMEOUT = 900
NOTE = ('One server of the lab, migrated back and forth, the two kinds '
        'interleaved: "nova" is Nova\'s own live migration to one named '
        'host (os-migrateLive), "multidest" the multi-destination one to '
        'N named hosts (os-migrateLive-multi). Request to ACTIVE: from '
        'the API request until Nova\'s database shows the server ACTIVE, '
        'with no task, on another host. Downtime: the source QEMU\'s STOP '
        'event to the RESUME event of the QEMU it ends on, with QEMU\'s '
        'own timestamps.')
TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Bench(object):

    def __init__(self, cloud):
        self.cloud = cloud
        self.lab = cloud.lab
        self.session = cloud.session('admin')
        self.db = pymysql.connect(
            host=self.lab.controller.address,
            port=layout.PORTS['mariadb'], user='lab',
            password=cloud.secrets['db'], database='nova', autocommit=True)
        self.events = libvirt_migration.EventLoop()
        self.uris = {}
        self.connections = []
        for node in self.lab.hosts:
            connection = libvirt.open(
                libvirtd.uri(self.lab.libvirt_dir(node.name)))
            self.events.watch(connection)
            self.uris[node.name] = connection.getURI()
            self.connections.append(connection)

    def compute(self, method, path, version='2.30', **kwargs):
        response = self.session.request(
            path, method, endpoint_filter={'service_type': 'compute'},
            headers={'OpenStack-API-Version': 'compute %s' % version},
            **kwargs)
        return response.json() if response.content else None

    def sql(self, query):
        with self.db.cursor() as cursor:
            cursor.execute(query)
            return [list(row) for row in cursor.fetchall()]

    def location(self, server_id):
        """(host, vm_state, task_state) from Nova's database."""
        rows = self.sql("SELECT host, vm_state, IFNULL(task_state, '') "
                        "FROM instances WHERE uuid = '%s'" % server_id)
        # Not in the cell's database until scheduled.
        return rows[0] if rows else (None, 'building', 'scheduling')

    def boot(self):
        image = self.compute('GET', '/images?name=%s' % resources.IMAGE)
        flavor = self.compute('GET', '/flavors?name=%s' % resources.FLAVOR)
        flavor_id = [f['id'] for f in flavor['flavors']
                     if f['name'] == resources.FLAVOR][0]
        server = self.compute('POST', '/servers', json={'server': {
            'name': 'bench-lab', 'imageRef': image['images'][0]['id'],
            'flavorRef': flavor_id, 'networks': 'none'}},
            version='2.37')['server']
        self.wait(server['id'], lambda host: bool(host))
        return server['id']

    def delete(self, server_id):
        self.compute('DELETE', '/servers/%s' % server_id)

    def wait(self, server_id, host_ok):
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            host, vm_state, task_state = self.location(server_id)
            if vm_state == 'error':
                raise RuntimeError('server %s went to ERROR' % server_id)
            if vm_state == 'active' and not task_state and host_ok(host):
                return host
            time.sleep(0.1)
        raise RuntimeError('server %s: no end within %ss'
                           % (server_id, TIMEOUT))

    def wait_settled(self, server_id):
        """Until no migration of the server is in progress."""
        deadline = time.monotonic() + TIMEOUT
        while self.sql(
                "SELECT id FROM migrations WHERE instance_uuid = '%s' AND "
                "deleted = 0 AND status NOT IN (%s)" % (
                    server_id, ', '.join("'%s'" % status for status in
                                         vocabulary.MigrationStatus
                                         .NOVA_FINAL))):
            if time.monotonic() > deadline:
                raise RuntimeError('migrations of %s never ended'
                                   % server_id)
            time.sleep(0.5)

    def measure(self, server_id, case, destinations):
        """(request to ACTIVE s, downtime ms) of one migration."""
        source = self.location(server_id)[0]
        [[number]] = self.sql("SELECT id FROM instances WHERE uuid = '%s'"
                              % server_id)
        name = 'instance-%08x' % int(number)
        self.events.forget()
        started = time.monotonic()
        if case == 'nova':
            body = {'os-migrateLive': {'host': destinations[0],
                                       'block_migration': 'auto'}}
        else:
            body = {'os-migrateLive-multi': {'destinations': destinations,
                                             'block_migration': 'auto'}}
        self.compute('POST', '/servers/%s/action' % server_id, json=body)
        host = self.wait(server_id, lambda host: host != source)
        total = time.monotonic() - started
        _, resumed = self.events.wait(self.uris[host], 'RESUME', [name])
        _, stopped = self.events.wait(self.uris[source], 'STOP', [name])
        self.wait_settled(server_id)
        return total, (resumed - stopped) * 1000


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='tools/run bench lab', description=__doc__.split('\n')[0])
    parser.add_argument('--repetitions', type=int, default=3)
    parser.add_argument('--destinations', type=int, action='append',
                        choices=range(1, layout.MAX_HOSTS), metavar='N',
                        help='a multi-destination case with N destinations '
                             '(repeatable; default 3); the lab grows to '
                             'the largest N plus one hosts')
    args = parser.parse_args(argv)
    counts = sorted(set(args.destinations or [3]))

    lab = layout.Lab(TOP)
    if counts[-1] + 1 > len(lab.hosts):
        lab.grow(counts[-1] + 1)
    cloud = cloud_mod.Cloud(lab)
    started_lab = not all(cloud.status().values())
    if started_lab:
        cloud.up()
    report = results.Report(
        'lab', 'Multi-destination against Nova\'s own live migration, '
        'in the lab')
    cases = ['nova'] + ['multidest N=%d' % count for count in counts]
    samples = {case: [] for case in cases}
    bench = Bench(cloud)
    server_id = bench.boot()
    print('Server %s on %s' % (server_id, bench.location(server_id)[0]))
    try:
        for repetition in range(args.repetitions):
            for case in cases:
                source = bench.location(server_id)[0]
                others = [n.name for n in lab.hosts if n.name != source]
                count = 1 if case == 'nova' else int(case.split('=')[1])
                total, downtime = bench.measure(server_id, case,
                                                others[:count])
                samples[case].append((total, downtime))
                print('%-16s %6.2f s  downtime %7.1f ms' % (
                    case, total, downtime), flush=True)
    finally:
        bench.delete(server_id)
        if started_lab:
            cloud.down()

    base_total = statistics.median(t for t, _ in samples['nova'])
    base_down = statistics.median(d for _, d in samples['nova'])
    rows = []
    for case in cases:
        total = statistics.median(t for t, _ in samples[case])
        down = statistics.median(d for _, d in samples[case])
        rows.append([case, '%.2f' % total, '%.2fx' % (total / base_total),
                     '%.0f' % down, '%.2fx' % (down / base_down)])
    report.note(NOTE)
    report.table(
        '%d MiB guest (TCG), %d MiB/s migration bandwidth, medians of %d'
        % (resources.FLAVOR_RAM_MB, _bandwidth(), args.repetitions),
        ('case', 'request to ACTIVE s', 'x nova', 'downtime ms', 'x nova'),
        rows, notes=['Targets: multi-destination N=3 request to ACTIVE '
                     'within 1.3x Nova\'s own (issue 8), N=4 within 1.3x '
                     '(issue 11).'])
    report.chart('Request to ACTIVE, x Nova\'s own', cases,
                 [float(row[2][:-1]) for row in rows], 'x nova',
                 reference=1.3, reference_label='target 1.3x')
    for path in report.write():
        print('Wrote', path)
    return 0


def _bandwidth():
    from tools.lab import config
    return config.MIGRATION_BANDWIDTH_MB


if __name__ == '__main__':
    sys.exit(main())
