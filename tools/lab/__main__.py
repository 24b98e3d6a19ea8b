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

"""tools/run lab up|down|status|env."""

import argparse
import os
import shlex
import sys

from tools.lab import cloud as cloud_mod
from tools.lab import layout
from tools.lab import storage as storage_mod


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='tools/run lab',
        description='A real Nova cloud on this machine: MariaDB, RabbitMQ, '
                    'Keystone, Glance, Placement, Neutron, Nova and '
                    'nova-multidest, with %d compute hosts by default.'
                    % len(layout.HOSTS))
    commands = parser.add_subparsers(dest='command', required=True)
    up = commands.add_parser('up', help='start the lab (bootstraps it the '
                                        'first time)')
    up.add_argument('--hosts', type=int, metavar='N',
                    help='grow the lab to N compute hosts (%d to %d); the '
                         'count is kept until "down --purge"'
                         % (len(layout.HOSTS), layout.MAX_HOSTS))
    down = commands.add_parser('down', help='stop every process of the lab '
                                            'and remove its network')
    down.add_argument('--purge', action='store_true',
                      help='also remove its state (databases, images, logs)')
    commands.add_parser('status', help='which of its processes run')
    env = commands.add_parser('env', help='print the OS_* variables of the '
                                          'lab for the openstack command')
    env.add_argument('--user', choices=('admin', cloud_mod.DEMO_USER),
                     default='admin')
    storage = commands.add_parser(
        'storage', help="show or switch the hosts' instances_path: the "
                        "shared volume, or each host's own directory (only "
                        "on a host without domains)")
    storage.add_argument('kind', nargs='?',
                         choices=(storage_mod.LOCAL, storage_mod.SHARED),
                         help='switch HOSTs to this; show them without it')
    storage.add_argument('hosts', nargs='*', metavar='HOST',
                         help='hosts (default: every host)')
    args = parser.parse_args(argv)

    top = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    try:
        lab = layout.Lab(top)
    except ValueError as exc:
        parser.error(str(exc))
    cloud = cloud_mod.Cloud(lab)
    try:
        if args.command == 'up':
            if args.hosts:
                try:
                    lab.grow(args.hosts)
                except ValueError as exc:
                    parser.error(str(exc))
            cloud.up()
        elif args.command == 'down':
            cloud.down(purge=args.purge)
        elif args.command == 'status':
            status = cloud.status()
            print('Lab %s (%s), controller %s, state in %s' % (
                lab.id, 'up' if all(status.values()) else
                'partly up' if any(status.values()) else 'down',
                lab.controller.address, lab.dir))
            for name, running in status.items():
                print('  %-28s %s' % (name, 'running' if running
                                      else 'stopped'))
            return 0 if all(status.values()) else 3
        elif args.command == 'storage':
            names = [node.name for node in lab.hosts]
            unknown = set(args.hosts) - set(names)
            if unknown:
                parser.error('no host %s; the hosts are %s' % (
                    ', '.join(sorted(unknown)), ', '.join(names)))
            for host in args.hosts or names:
                if args.kind:
                    cloud.set_instances_storage(host, args.kind)
                print('%s: %s instances_path' % (
                    host, cloud.instances_storage(host)))
        elif args.command == 'env':
            for key, value in cloud.env(args.user).items():
                print('export %s=%s' % (key, shlex.quote(value)))
    except cloud_mod.LabError as exc:
        print('lab %s: %s' % (lab.id, exc), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
