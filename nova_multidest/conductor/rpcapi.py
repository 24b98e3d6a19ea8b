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

"""Client of nova-multidest-conductor.

nova-api (our paste filter) casts the multi-destination live migration
here. The topic is our own (``[multidest] conductor_topic``): Nova's
conductor API is versioned by Nova and cannot grow methods from outside
the tree.

API version history:

* 1.0 - Initial version: live_migrate_multi.
"""

import oslo_messaging as messaging

from nova.objects import base as objects_base
from nova import rpc

from nova_multidest import conf
from nova_multidest import exceptions

CONF = conf.CONF

RPC_API_VERSION = '1.0'
# The newest version every conductor of a deployment serves. Raise it in a
# release after the one that added the method, so that during a rolling
# upgrade an upgraded nova-api never sends what an old conductor cannot
# dispatch; methods check can_send_version() for anything newer.
VERSION_CAP = '1.0'


class ConductorAPI(object):
    """Casts to nova-multidest-conductor."""

    def __init__(self):
        target = messaging.Target(topic=CONF.multidest.conductor_topic,
                                  version=RPC_API_VERSION)
        serializer = objects_base.NovaObjectSerializer()
        self.client = rpc.get_client(target, version_cap=VERSION_CAP,
                                     serializer=serializer)

    def live_migrate_multi(self, context, instance, destinations=None,
                           count=None, block_migration='auto',
                           warm_up=False):
        """Start a multi-destination live migration of ``instance``.

        The caller has set task_state MIGRATING and started the
        'live-migration' instance action. ``destinations`` names the hosts,
        else ``count`` hosts come from the scheduler (the flavor's
        ``multidest:destinations`` extra spec or ``[multidest]
        default_destinations`` when both are None).

        The cast is published as mandatory (``at_least_once``): a broker
        that has no queue for the topic returns it, and the caller gets
        NoConductorListening at once instead of a request lost without a
        trace until ``[multidest] accept_timeout``. That happens after a
        broker restart, until the conductors declare their (non-durable)
        queue again.
        """
        cctxt = self.client.prepare(
            version='1.0',
            transport_options=messaging.TransportOptions(at_least_once=True))
        try:
            cctxt.cast(context, 'live_migrate_multi', instance=instance,
                       destinations=destinations, count=count,
                       block_migration=block_migration, warm_up=warm_up)
        except messaging.MessageUndeliverable:
            raise exceptions.NoConductorListening(
                topic=CONF.multidest.conductor_topic)
