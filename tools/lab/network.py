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

"""The lab's network: a bridge in the root namespace, a netns per node.

The controller's services get a namespace of their own, so their
well-known ports never collide with another lab's; each compute host
gets one, as a separate machine would. The bridge carries an address
too, so that the ``openstack`` command run from the root namespace
reaches the controller.
"""

import ipaddress
import os
import subprocess

from tools.lab import processes


def _ip(*args, check=True):
    result = subprocess.run(('ip',) + args, capture_output=True, text=True)
    if check and result.returncode:
        raise processes.LabError('ip %s failed: %s' % (
            ' '.join(args), result.stderr.strip()))
    return result


def namespaces():
    return {line.split()[0] for line in
            _ip('netns', 'list').stdout.splitlines() if line.strip()}


def link_exists(name):
    return _ip('link', 'show', 'dev', name, check=False).returncode == 0


def _addresses_in(subnet):
    """Root-namespace interfaces holding an address of ``subnet``."""
    network = ipaddress.ip_network(subnet)
    users = set()
    for line in _ip('-o', '-4', 'addr', 'show').stdout.splitlines():
        fields = line.split()
        address = ipaddress.ip_interface(fields[3])
        if address.ip in network:
            users.add(fields[1])
    return users


def create(lab):
    """Create the bridge and every node's namespace; idempotent."""
    users = _addresses_in(lab.subnet) - {lab.bridge}
    if users:
        raise processes.LabError(
            'subnet %s of lab %s is already used by %s (another lab?); '
            'choose another lab id with MULTIDEST_LAB_ID'
            % (lab.subnet, lab.id, ', '.join(sorted(users))))
    if not link_exists(lab.bridge):
        _ip('link', 'add', lab.bridge, 'type', 'bridge')
    if lab.bridge_address not in _ip('-o', '-4', 'addr', 'show', 'dev',
                                     lab.bridge).stdout:
        _ip('addr', 'add', '%s/%d' % (lab.bridge_address, lab.prefixlen),
            'dev', lab.bridge)
    _ip('link', 'set', lab.bridge, 'up')
    existing = namespaces()
    for node in lab.nodes:
        if node.netns not in existing:
            _ip('netns', 'add', node.netns)
        if not link_exists(node.veth):
            _ip('link', 'add', node.veth, 'type', 'veth', 'peer', 'name',
                'eth0', 'netns', node.netns)
        _ip('link', 'set', node.veth, 'master', lab.bridge, 'up')
        inside = ('netns', 'exec', node.netns, 'ip')
        if node.address not in _ip(*inside, '-o', '-4', 'addr', 'show',
                                   'dev', 'eth0').stdout:
            _ip(*inside, 'addr', 'add', '%s/%d' % (node.address,
                                                   lab.prefixlen),
                'dev', 'eth0')
        _ip(*inside, 'link', 'set', 'eth0', 'up')
        _ip(*inside, 'link', 'set', 'lo', 'up')


def remove(lab):
    """Remove what ``create`` made; what is already gone is skipped."""
    existing = namespaces()
    for node in lab.nodes:
        if link_exists(node.veth):
            _ip('link', 'del', node.veth)
        if node.netns in existing:
            _ip('netns', 'del', node.netns)
    if link_exists(lab.bridge):
        _ip('link', 'del', lab.bridge)


def exists(lab):
    return link_exists(lab.bridge) or bool(
        namespaces() & {node.netns for node in lab.nodes})


def _identity(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def processes_in(lab):
    """{pid: namespace} of every process in one of the lab's namespaces.

    Whatever runs there was started by the lab, directly or by one of its
    daemons (libvirtd's QEMUs), whether or not a PID file names it.
    """
    namespaces = {}
    for node in lab.nodes:
        identity = _identity(os.path.join('/run/netns', node.netns))
        if identity:
            namespaces[identity] = node.netns
    found = {}
    if not namespaces:
        return found
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            netns = namespaces.get(
                _identity('/proc/%s/ns/net' % entry))
            if netns:
                found[int(entry)] = netns
    return found
