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

"""The compute driver operators select:
``compute_driver = multidest.MultiDestLibvirtDriver``.

nova-compute loads a compute driver and nothing else, so the driver is
where this project's compute side starts. It is the libvirt driver of
``virt/driver.py`` that also serves the endpoint of multi-destination
migration (``endpoint.py``) on ``[multidest] compute_topic`` from
``init_host``, and routes Nova's own force-complete and abort of a live
migration to a multi-destination stream when one runs.
"""

from oslo_log import log as logging
import oslo_messaging as messaging

from nova.compute import task_states
from nova import context as nova_context
from nova import exception as nova_exception
from nova import objects
from nova.objects import base as objects_base
from nova import rpc

from nova_multidest.compute import endpoint as compute_endpoint
from nova_multidest.compute import rpcapi
from nova_multidest import conf
from nova_multidest.virt import driver as virt_driver
from nova_multidest import vocabulary

CONF = conf.CONF
LOG = logging.getLogger(__name__)


class MultiDestLibvirtDriver(virt_driver.LibvirtDriver):
    """Nova's libvirt driver plus multi-destination live migration."""

    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi, read_only=read_only)
        self.multidest = None
        self._multidest_server = None

    def init_host(self, host):
        super().init_host(host)
        endpoint = compute_endpoint.ComputeEndpoint(
            self, host, self.multidest_hypervisor,
            version=self.multidest_rpc_version)
        endpoint.cleanup_after_restart(nova_context.get_admin_context())
        target = messaging.Target(topic=CONF.multidest.compute_topic,
                                  server=host)
        server = rpc.get_server(target, [endpoint],
                                serializer=objects_base.NovaObjectSerializer())
        server.start()
        endpoint.start_sweeping(nova_context.get_admin_context(),
                                compute_endpoint.SWEEP_INTERVAL)
        self.multidest = endpoint
        self._multidest_server = server
        LOG.info('Serving multi-destination migration on topic %s',
                 CONF.multidest.compute_topic)

    multidest_rpc_version = rpcapi.RPC_API_VERSION

    def process_instances_at_startup(self, context, instances):
        """Keep Nova's start-up away from servers a group owns.

        Nova's _init_instance resets a MIGRATING server on its host: it
        errs the group's running Migration and clears task_state, and it
        fails the whole start when the group ended meanwhile (its
        expected task_state is gone). A server whose group runs, or that a
        group moved away while this compute was down, is the conductor's.
        """
        instances = super().process_instances_at_startup(context, instances)
        kept = [instance for instance in instances
                if not self._owned_by_a_group(context, instance)]
        if len(kept) == len(instances):
            return instances
        if isinstance(instances, objects.InstanceList):
            return objects.InstanceList(objects=kept)
        return kept

    def _owned_by_a_group(self, context, instance):
        if (instance.task_state != task_states.MIGRATING and
                not vocabulary.group_in_progress(instance.system_metadata)):
            return False
        try:
            stored = objects.Instance.get_by_uuid(
                context, instance.uuid, expected_attrs=['system_metadata'])
        except nova_exception.InstanceNotFound:
            return False
        owned = (vocabulary.group_in_progress(instance.system_metadata) or
                 vocabulary.group_in_progress(stored.system_metadata) or
                 stored.host != instance.host)
        if owned:
            LOG.info('Left to nova-multidest-conductor at start-up: its '
                     'multi-destination migration owns this server',
                     instance=instance)
        return owned

    def cleanup_host(self, host):
        server, self._multidest_server = self._multidest_server, None
        if server is not None:
            server.stop()
            server.wait()
        if self.multidest is not None:
            self.multidest.close()
        super().cleanup_host(host)

    def get_available_resource(self, nodename):
        """Nova's resources, plus the mark of this driver.

        Nova's resource tracker copies ``stats`` into the host's
        ComputeNode record, where nova-api looks before it accepts the
        host as a named destination.
        """
        resources = super().get_available_resource(nodename)
        stats = resources.setdefault('stats', {})
        # The version served: the conductor caps its calls at the oldest
        # of the hosts of a migration (``rpcapi.host_version``).
        stats[vocabulary.COMPUTE_STATS_KEY] = self.multidest_rpc_version
        return resources

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
