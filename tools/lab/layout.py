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

"""Names, addresses and paths of one lab, derived from its id.

The id (``MULTIDEST_LAB_ID``, else a hash of the checkout's path) is in
every namespace, bridge, veth and directory name, and picks the lab's
/24 out of 198.19.0.0/16 (RFC 2544 benchmarking space; the dataplane
benchmark uses 198.18.0.0/24), so that labs of several checkouts run at
once on one machine.
"""

import dataclasses
import hashlib
import os
import re
import sys

ID_PATTERN = re.compile(r'^[a-z0-9]{1,6}$')
HOSTS = ('host1', 'host2', 'host3', 'host4')
MAX_HOSTS = 8
CONTROLLER = 'controller'
PORTS = {'keystone': 5000, 'glance': 9292, 'placement': 8778,
         'neutron': 9696, 'nova-api': 8774, 'mariadb': 3306,
         'rabbitmq': 5672, 'epmd': 4369}


@dataclasses.dataclass(frozen=True)
class Node:
    name: str
    netns: str
    veth: str
    address: str


class Lab(object):

    def __init__(self, top, lab_id=None, hosts=None):
        self.top = top
        self.id = (lab_id or os.environ.get('MULTIDEST_LAB_ID') or
                   hashlib.sha1(os.path.realpath(top).encode())
                   .hexdigest()[:4])
        if not ID_PATTERN.match(self.id):
            raise ValueError('MULTIDEST_LAB_ID must be 1 to 6 lower-case '
                             'letters or digits, not %r' % self.id)
        octet = int(hashlib.sha1(self.id.encode()).hexdigest()[:4], 16) % 256
        self.prefixlen = 24
        self.subnet = '198.19.%d.0/24' % octet
        self.bridge_address = '198.19.%d.1' % octet
        self.bridge = 'mdl%s-br' % self.id
        self.controller = Node(CONTROLLER, 'mdlab-%s-ctl' % self.id,
                               'mdl%s-c' % self.id, '198.19.%d.2' % octet)
        self._octet = octet
        self.dir = os.path.join(top, '.lab', self.id)
        self.bin = os.path.dirname(os.path.abspath(sys.executable))
        self._set_hosts(hosts or self._recorded_hosts() or HOSTS)

    def _set_hosts(self, names):
        self.hosts = [Node(name, 'mdlab-%s-%s' % (self.id, name),
                           'mdl%s-%d' % (self.id, index),
                           '198.19.%d.%d' % (self._octet, 10 + index))
                      for index, name in enumerate(names, 1)]
        self.nodes = [self.controller] + self.hosts

    def _recorded_hosts(self):
        try:
            with open(self.path('compute-hosts')) as f:
                return tuple(f.read().split())
        except FileNotFoundError:
            return None

    def grow(self, count):
        """Give the lab ``count`` compute hosts from now on.

        The count is recorded in the lab's state so that every later
        command (status, down, the tests) sees the same hosts. A lab
        only grows: a host that leaves would leave its compute service,
        resource provider and domains behind in the cloud.
        """
        if not len(HOSTS) <= count <= MAX_HOSTS:
            raise ValueError('a lab has %d to %d compute hosts, not %d'
                             % (len(HOSTS), MAX_HOSTS, count))
        if count < len(self.hosts):
            raise ValueError(
                'lab %s already has %d compute hosts; a lab does not '
                'shrink: run "tools/run lab down --purge" first to start '
                'again with %d' % (self.id, len(self.hosts), count))
        names = tuple('host%d' % index for index in range(1, count + 1))
        os.makedirs(self.dir, exist_ok=True)
        with open(self.path('compute-hosts'), 'w') as f:
            f.write('\n'.join(names) + '\n')
        self._set_hosts(names)

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def host(self, name):
        for node in self.hosts:
            if node.name == name:
                return node
        raise KeyError(name)

    def host_dir(self, name):
        return self.path('hosts', name)

    def libvirt_dir(self, name):
        return self.path('hosts', name, 'libvirt')

    def url(self, service, path=''):
        return 'http://%s:%d%s' % (self.controller.address, PORTS[service],
                                   path)

    @property
    def auth_url(self):
        return self.url('keystone', '/v3')

    def tool(self, name):
        return os.path.join(self.bin, name)
