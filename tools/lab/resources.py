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

"""What the lab's cloud offers its users: the guest images and a flavor.

The guest is the project's dirtying kernel (``nova_multidest.dataplane.
guest``), uploaded as an AKI-style kernel image that a tiny raw root
disk image names in its ``kernel_id`` property, so that Nova's libvirt
driver boots it through its normal path (``<kernel>`` in the domain).
It keeps writing a counter into guest memory, which the lab's tests read
from outside to see that the guest runs.
"""

import os
import tempfile

from nova_multidest.dataplane import guest as guest_mod

KERNEL_IMAGE = 'multidest-guest-kernel'
IMAGE = 'multidest-guest'
FLAVOR = 'lab.tiny'
FLAVOR_RAM_MB = 64
ROOT_DISK_BYTES = 1 << 20
# A timer-driven sweep: four pages per millisecond tick, halted in
# between, so that a guest costs the shared host little CPU yet keeps
# dirtying memory; the word at COUNTER_ADDRESS changes several times a
# second.
GUEST = guest_mod.DirtyingGuest(dirty_start=2 << 20, dirty_size=4 << 20,
                                pages_per_tick=4, tick_hz=1000)
COUNTER_ADDRESS = GUEST.dirty_start


def ensure(cloud):
    """Create the images and flavor unless an earlier start did."""
    import openstack
    connection = openstack.connection.Connection(
        session=cloud.session('admin'), region_name='RegionOne')
    GUEST.validate(FLAVOR_RAM_MB)
    kernel = connection.image.find_image(KERNEL_IMAGE)
    with tempfile.TemporaryDirectory() as scratch:
        if kernel is None:
            kernel = connection.image.create_image(
                name=KERNEL_IMAGE, filename=GUEST.write(scratch),
                disk_format='aki', container_format='aki',
                visibility='public', wait=True)
        if connection.image.find_image(IMAGE) is None:
            disk = os.path.join(scratch, 'root.raw')
            with open(disk, 'wb') as f:
                f.truncate(ROOT_DISK_BYTES)
            connection.image.create_image(
                name=IMAGE, filename=disk, disk_format='raw',
                container_format='bare', visibility='public',
                kernel_id=kernel.id, wait=True)
    if connection.compute.find_flavor(FLAVOR) is None:
        connection.compute.create_flavor(name=FLAVOR, ram=FLAVOR_RAM_MB,
                                         vcpus=1, disk=1, is_public=True)
