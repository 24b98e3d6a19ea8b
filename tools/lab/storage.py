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

"""The lab's shared instances_path: a GlusterFS volume over the lab network.

Shared-storage live migration needs the instance directory on storage that
every host mounts, and libvirt checks that it really is: it refuses a
migration of a disk on a local filesystem ("Migration without shared
storage is unsafe"), whatever the cache mode, unless the filesystem is one
it knows as shared (NFS, GlusterFS, Ceph, ...). The machine's kernel may
have no NFS, but FUSE is enough for GlusterFS: one brick server
(``glusterfsd``) in the controller's namespace exports a directory over
TCP, and each compute host mounts it (``glusterfs``, a FUSE client) on
``instances_path`` inside its own mount namespace, as it would mount NFS.
Both run from volume files of their own, without glusterd, so nothing of
the machine's GlusterFS state is touched.
"""

import os
import textwrap

PORT = 24009
VOLUME = 'lab-instances'
FS_TYPE = 'fuse.glusterfs'

SERVER_VOLFILE = textwrap.dedent('''\
    volume {volume}-posix
        type storage/posix
        option directory {brick}
    end-volume

    volume {volume}
        type features/locks
        subvolumes {volume}-posix
    end-volume

    volume {volume}-server
        type protocol/server
        option transport-type tcp
        option transport.socket.bind-address {address}
        option transport.socket.listen-port {port}
        option auth.addr.{volume}.allow {subnet}
        subvolumes {volume}
    end-volume
    ''')

CLIENT_VOLFILE = textwrap.dedent('''\
    volume {volume}-client
        type protocol/client
        option transport-type tcp
        option remote-host {address}
        option remote-port {port}
        option remote-subvolume {volume}
    end-volume
    ''')


def directory(lab):
    return lab.path('shared-storage')


def mount_point(lab):
    """instances_path of every host: where each mounts the volume."""
    return lab.path('instances')


def prepare(lab):
    """Write both volume files; create the brick and the mount point."""
    top = directory(lab)
    brick = os.path.join(top, 'brick')
    for path in (brick, mount_point(lab)):
        os.makedirs(path, exist_ok=True)
    values = {'volume': VOLUME, 'brick': brick, 'port': PORT,
              'address': lab.controller.address,
              'subnet': lab.subnet.rsplit('.', 1)[0] + '.*'}
    for name, template in (('server.vol', SERVER_VOLFILE),
                           ('client.vol', CLIENT_VOLFILE)):
        with open(os.path.join(top, name), 'w') as f:
            f.write(template.format(**values))


def server_command(lab, log_path):
    """The brick server, in the foreground."""
    return ['glusterfsd', '--no-daemon', '--volfile',
            os.path.join(directory(lab), 'server.vol'),
            '--log-file', log_path]


def client_command(lab, log_path):
    """A host's FUSE mount of the volume on instances_path.

    In the foreground: stopping the process unmounts it.
    """
    return ['glusterfs', '--no-daemon', '--volfile',
            os.path.join(directory(lab), 'client.vol'),
            '--log-file', log_path, mount_point(lab)]


def mounted(pid, path):
    """Whether process ``pid`` sees the volume mounted on ``path``."""
    try:
        with open('/proc/%d/mounts' % pid) as f:
            return any(fields[1] == path and fields[2] == FS_TYPE
                       for fields in (line.split() for line in f))
    except (OSError, TypeError):
        return False


# -- a host's own instances_path ------------------------------------------
#
# A compute whose instances_path is its own local directory, as on most
# Nova clouds without Ceph: live migrations of its servers must copy their
# disks (``--block-migration``). The lab switches a running host to it
# and back by mounting the host's own directory over the volume inside the
# host's mount namespace only: libvirtd and nova-compute, which share that
# namespace, see the local directory at once, without a restart, and the
# volume stays mounted underneath for the next switch back.

LOCAL = 'local'
SHARED = 'shared'


def local_directory(lab, host):
    """The directory ``host`` sees as instances_path while local."""
    return os.path.join(lab.host_dir(host), 'instances')


def local_command(lab, host):
    """Mount the host's own directory over instances_path (in its ns)."""
    return ['mount', '--bind', local_directory(lab, host),
            mount_point(lab)]


def shared_command(lab):
    """Unmount the host's own directory: the volume shows again."""
    return ['umount', mount_point(lab)]


def kind(pid, path):
    """LOCAL or SHARED: what process ``pid`` sees on ``path``; or None."""
    try:
        with open('/proc/%d/mounts' % pid) as f:
            return kind_in(f, path)
    except (OSError, TypeError):
        return None


def kind_in(mounts, path):
    """LOCAL or SHARED on ``path`` in a mount table; None if unmounted.

    Of mounts stacked on one path, the last one listed is the one seen.
    """
    types = [fields[2] for fields in (line.split() for line in mounts)
             if fields[1] == path]
    if not types:
        return None
    return SHARED if types[-1] == FS_TYPE else LOCAL
