"""Shim so that Nova can load our driver.

Nova imports ``compute_driver`` only from below ``nova.virt``; this package
is the only file nova-multidest installs inside Nova's own tree.
"""

from nova_multidest.virt.driver import MultiDestLibvirtDriver  # noqa: F401
