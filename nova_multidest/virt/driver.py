"""The compute driver operators select with
``compute_driver = multidest.MultiDestLibvirtDriver``.

It is Nova's libvirt driver, unchanged for every ordinary operation, so
that a compute host running it behaves exactly like one running
``libvirt.LibvirtDriver`` until a multi-destination migration touches it.
"""

from oslo_log import log as logging

from nova.virt.libvirt import driver as libvirt_driver

LOG = logging.getLogger(__name__)


class MultiDestLibvirtDriver(libvirt_driver.LibvirtDriver):
    """Nova's libvirt driver plus multi-destination live migration."""
