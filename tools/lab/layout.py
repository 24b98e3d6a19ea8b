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

    def __init__(self, top, lab_id=None, hosts=HOSTS):
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
        self.hosts = [Node(name, 'mdlab-%s-%s' % (self.id, name),
                           'mdl%s-%d' % (self.id, index),
                           '198.19.%d.%d' % (octet, 10 + index))
                      for index, name in enumerate(hosts, 1)]
        self.nodes = [self.controller] + self.hosts
        self.dir = os.path.join(top, '.lab', self.id)
        self.bin = os.path.dirname(os.path.abspath(sys.executable))

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
