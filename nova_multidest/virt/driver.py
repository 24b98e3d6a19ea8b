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

"""The compute driver operators select with
``compute_driver = multidest.MultiDestLibvirtDriver``.

It is Nova's libvirt driver, unchanged for every ordinary operation, so
that a compute host running it behaves exactly like one running
``libvirt.LibvirtDriver`` until a multi-destination migration touches it.
It adds the endpoint of multi-destination migration, served from
``init_host``, and routes Nova's own force-complete and abort of a live
migration to a multi-destination stream when one runs.
"""

import functools

from oslo_log import log as logging
import oslo_messaging as messaging

from nova.compute import power_state
import nova.conf
from nova import context as nova_context
from nova import exception as nova_exception
from nova import objects
from nova.objects import base as objects_base
from nova import rpc
from nova.virt import driver as virt_driver
from nova.virt.libvirt import driver as libvirt_driver
from nova.virt.libvirt import migration as libvirt_migration

from nova_multidest.compute import endpoint as compute_endpoint

CONF = nova.conf.CONF
LOG = logging.getLogger(__name__)


class _SourceXML(object):
    """Stands in for the source Guest in Nova's XML update helpers."""

    def __init__(self, xml):
        self._xml = xml

    def get_xml_desc(self, **kwargs):
        return self._xml


class MultiDestLibvirtDriver(libvirt_driver.LibvirtDriver):
    """Nova's libvirt driver plus multi-destination live migration."""

    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi, read_only=read_only)
        self.multidest = None
        self._multidest_server = None

    def init_host(self, host):
        super().init_host(host)
        endpoint = compute_endpoint.MultiDestComputeManager(self, host)
        endpoint.cleanup_after_restart(nova_context.get_admin_context())
        target = messaging.Target(topic=CONF.multidest.compute_topic,
                                  server=host)
        server = rpc.get_server(target, [endpoint],
                                serializer=objects_base.NovaObjectSerializer())
        server.start()
        self.multidest = endpoint
        self._multidest_server = server
        LOG.info('Serving multi-destination migration on topic %s',
                 CONF.multidest.compute_topic)

    def cleanup_host(self, host):
        server, self._multidest_server = self._multidest_server, None
        if server is not None:
            server.stop()
            server.wait()
        if self.multidest is not None:
            self.multidest.close()
        super().cleanup_host(host)

    def live_migration_force_complete(self, instance):
        if self.multidest is not None and self.multidest.has_stream(instance):
            self.multidest.switch_over(None, instance)
            return
        super().live_migration_force_complete(instance)

    def live_migration_abort(self, instance):
        if self.multidest is not None and self.multidest.has_stream(instance):
            self.multidest.abort_stream(None, instance)
            return
        super().live_migration_abort(instance)

    # -- helpers the endpoint uses ---------------------------------------

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
