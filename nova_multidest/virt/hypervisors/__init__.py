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

"""Hypervisor extensions the compute driver drives, found by name.

The data plane's ``Hypervisor`` interface creates a destination from a
source handle, which only works when both run on one host. A Nova
destination host has the source's domain XML instead, sent by the source
compute, so the extensions here also implement ``NovaHypervisor``.
"""

import abc

from stevedore import driver as stevedore_driver

from nova_multidest.dataplane import disk_copy
from nova_multidest.dataplane import hypervisor
from nova_multidest.dataplane import relay
from nova_multidest import exceptions

NAMESPACE = 'nova_multidest.hypervisors'


class NovaHypervisor(hypervisor.Hypervisor):
    """What a compute host needs beyond the data-plane interface.

    ``connect`` is a callable returning the host's libvirt connection, so
    that the extension shares the connection Nova's driver manages.
    """

    def __init__(self, connect):
        self._connect = connect

    @property
    def connection(self):
        return self._connect()

    @abc.abstractmethod
    def source_xml(self, domain_name):
        """The domain XML a destination needs to receive the stream."""

    @abc.abstractmethod
    def destination_from_xml(self, name, xml):
        """Like ``create_destination``, from the source's domain XML."""

    @abc.abstractmethod
    def destroy_incoming(self, domain_name):
        """Destroy a domain left paused in incoming mode, if there is one.

        Used after a compute restart, when no handle survived. Returns
        True if a domain was destroyed; never touches a running domain.
        """

    def create_relay(self, secret, destinations, **kwargs):
        """The source-side fan-out; a fake extension replaces it."""
        return relay.StreamRelay(secret, destinations, **kwargs)

    def create_disk_copy(self, source, disks, destinations, secret,
                         **kwargs):
        """The source-side disk copy; a fake extension replaces it."""
        return disk_copy.DiskCopy(source, disks, destinations, secret,
                                  **kwargs)

    def create_destination(self, name, source):
        return self.destination_from_xml(name, self.source_xml(source.name))


def load(name, connect):
    """Instantiate the extension ``[multidest] hypervisor`` names."""
    manager = stevedore_driver.DriverManager(
        namespace=NAMESPACE, name=name, invoke_on_load=True,
        invoke_args=(connect,))
    extension = manager.driver
    if not isinstance(extension, NovaHypervisor):
        raise exceptions.InvalidSettings(
            reason='[multidest] hypervisor = %s cannot run inside '
                   'nova-compute; use libvirt' % name)
    return extension
