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

"""A libvirtd of its own in a private mount namespace.

The dataplane tier starts one per test; the lab one per compute host.
Its configuration (QEMU runs as root, no cgroups, no virtlogd), state
and sockets live in one directory, mounted over libvirt's usual paths
inside the namespace only, so nothing of the machine's libvirt is
touched and the state stays readable from outside (QEMU's pid files
under ``run/qemu``, domain logs under ``log/qemu``).
"""

import os
import textwrap
import uuid

QEMU_CONF = textwrap.dedent('''\
    user = "root"
    group = "root"
    dynamic_ownership = 0
    security_driver = "none"
    namespaces = [ ]
    cgroup_controllers = [ ]
    stdio_handler = "file"
    ''')

# libvirt's paths, each backed by a folder of the daemon's directory.
LIBVIRT_DIRS = (('run', '/run/libvirt'), ('lib', '/var/lib/libvirt'),
                ('cache', '/var/cache/libvirt'), ('log', '/var/log/libvirt'))

# $1: the daemon's directory, $2: a host name (needs a UTS namespace) or
# "", then the command to run in the namespace. libvirtd resolves its
# default QEMU user before reading qemu.conf, so the passwd and group it
# sees must name one.
NAMESPACE_SCRIPT = textwrap.dedent('''\
    set -e
    for dir in /run /var/lib /var/cache /var/log; do
        mount -t tmpfs tmpfs "$dir"
    done
    %s
    mount --bind "$1/etc" /etc/libvirt
    mount --bind "$1/passwd" /etc/passwd
    mount --bind "$1/group" /etc/group
    if [ -n "$2" ]; then hostname "$2"; fi
    shift 2
    exec "$@"
    ''') % '\n'.join('mkdir -p %s && mount --bind "$1/%s" %s'
                     % (path, name, path) for name, path in LIBVIRT_DIRS)


def _with_qemu_user(path, line):
    with open(path) as f:
        content = f.read()
    if not any(entry.startswith('libvirt-qemu:')
               for entry in content.splitlines()):
        content = content.rstrip('\n') + '\n' + line + '\n'
    return content


def prepare(directory, listen_address=None, host_uuid=None):
    """Write the daemon's configuration into ``directory``.

    ``listen_address`` makes it accept unauthenticated TCP connections
    there (Nova's own live migration between lab hosts); ``host_uuid``
    must differ between daemons that migrate to each other, or libvirt
    refuses a migration "to the same host".
    """
    for name, _path in LIBVIRT_DIRS + (('etc', None),):
        os.makedirs(os.path.join(directory, name), exist_ok=True)
    with open(os.path.join(directory, 'etc', 'qemu.conf'), 'w') as f:
        f.write(QEMU_CONF)
    lines = ['auth_unix_rw = "none"', 'auth_unix_ro = "none"',
             'host_uuid = "%s"' % (host_uuid or uuid.uuid4())]
    if listen_address:
        lines += ['listen_tcp = 1', 'listen_tls = 0',
                  'listen_addr = "%s"' % listen_address,
                  'auth_tcp = "none"']
    with open(config_path(directory), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(os.path.join(directory, 'passwd'), 'w') as f:
        f.write(_with_qemu_user(
            '/etc/passwd',
            'libvirt-qemu:x:64055:64055::/nonexistent:/usr/sbin/nologin'))
    with open(os.path.join(directory, 'group'), 'w') as f:
        f.write(_with_qemu_user('/etc/group', 'libvirt-qemu:x:64055:'))


def config_path(directory):
    return os.path.join(directory, 'etc', 'libvirtd.conf')


def socket_path(directory):
    return os.path.join(directory, 'run', 'libvirt-sock')


def uri(directory):
    """libvirt URI of the daemon, usable from outside its namespace."""
    return 'qemu+unix:///system?socket=%s' % socket_path(directory)


def namespace_command(directory, command, hostname=''):
    """``command`` in a new mount namespace laid out for the daemon.

    With ``hostname`` the namespace also gets its own UTS namespace, so
    that each lab host's libvirtd reports its own host name to Nova.
    """
    argv = ['unshare', '--mount', '--propagation', 'private']
    if hostname:
        argv.append('--uts')
    return argv + ['sh', '-c', NAMESPACE_SCRIPT, 'libvirt-namespace',
                   directory, hostname] + list(command)


def daemon_command(directory, listen=False):
    argv = ['libvirtd', '-f', config_path(directory)]
    if listen:
        argv.append('--listen')
    return argv


def qemu_pids(directory, domains=None):
    """PIDs libvirt recorded for the QEMU processes of ``domains``.

    Without ``domains``, of every domain that has a PID file.
    """
    run_dir = os.path.join(directory, 'run', 'qemu')
    if domains is None:
        try:
            domains = [name[:-len('.pid')] for name in os.listdir(run_dir)
                       if name.endswith('.pid')]
        except OSError:
            domains = []
    pids = set()
    for domain in domains:
        try:
            with open(os.path.join(run_dir, domain + '.pid')) as f:
                pids.add(int(f.read().strip()))
        except (OSError, ValueError):
            pass
    return pids
