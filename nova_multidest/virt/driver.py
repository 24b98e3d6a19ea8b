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

"""Nova's libvirt driver with what multi-destination migration needs of it.

Unchanged for every ordinary operation, so that a compute host behaves
exactly like one running ``libvirt.LibvirtDriver`` until a
multi-destination migration touches it. It adds the host-level steps the
compute endpoint (``compute/endpoint.py``) takes for one destination of
several, which Nova's own driver only takes for its single destination,
and builds the hypervisor extension (``[multidest] hypervisor``) on this
host's libvirt connection. ``compute/driver.py`` composes it with the
endpoint into the driver operators select.
"""

import functools

from oslo_log import log as logging

from nova.compute import power_state
from nova import exception as nova_exception
from nova import objects
from nova.virt import driver as virt_driver
from nova.virt.libvirt import driver as libvirt_driver
from nova.virt.libvirt import migration as libvirt_migration

from nova_multidest import conf
from nova_multidest.virt import hypervisors

CONF = conf.CONF
LOG = logging.getLogger(__name__)


class _SourceXML(object):
    """Stands in for the source Guest in Nova's XML update helpers."""

    def __init__(self, xml):
        self._xml = xml

    def get_xml_desc(self, **kwargs):
        return self._xml


class LibvirtDriver(libvirt_driver.LibvirtDriver):
    """Nova's libvirt driver plus the steps of one of several copies."""

    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi, read_only=read_only)
        self.multidest_hypervisor = None

    def init_host(self, host):
        super().init_host(host)
        self.multidest_hypervisor = hypervisors.load(
            CONF.multidest.hypervisor, self._multidest_connection)

    def _multidest_connection(self):
        # Looked up at every use: the Host reconnects after a libvirtd
        # restart and replaces its connection.
        return self._host.get_connection()

    def multidest_destination_xml(self, instance, source_xml, migrate_data):
        """The source's domain XML rewritten for this host.

        Nova does this on the source for its one destination; with several
        destinations each one applies its own migrate data (volume paths,
        VIFs of its port binding, listen addresses) to the source's XML.
        """
        get_vif_config = None
        if 'vifs' in migrate_data and migrate_data.vifs:
            get_vif_config = functools.partial(
                self.vif_driver.get_config, instance=instance,
                image_meta=instance.image_meta, flavor=instance.flavor,
                virt_type=CONF.libvirt.virt_type)
        return libvirt_migration.get_updated_guest_xml(
            instance, _SourceXML(source_xml), migrate_data,
            self._get_volume_config, get_vif_config=get_vif_config)

    def multidest_copied_devices(self, context, instance):
        """Target devices Nova's block migration copies (not volumes)."""
        guest = self._host.get_guest(instance)
        return self._live_migration_copy_disk_paths(context, instance,
                                                    guest)[1]

    def multidest_guest_running(self, instance):
        try:
            guest = self._host.get_guest(instance)
        except nova_exception.InstanceNotFound:
            return False
        return guest.get_power_state(self._host) == power_state.RUNNING

    def multidest_disconnect_volume(self, context, connection_info,
                                    instance):
        self._disconnect_volume(context, connection_info, instance)

    def multidest_cleanup_source(self, context, instance, network_info,
                                 destroy_disks, migrate_data=None):
        """What Nova's post-live-migration does on the source.

        The BDMs must still describe the source's volume connections.
        """
        bdms = objects.BlockDeviceMappingList.get_by_instance_uuid(
            context, instance.uuid)
        block_device_info = virt_driver.get_block_device_info(instance, bdms)
        self.post_live_migration(context, instance, block_device_info,
                                 migrate_data)
        self.destroy(context, instance, network_info,
                     destroy_disks=destroy_disks)
