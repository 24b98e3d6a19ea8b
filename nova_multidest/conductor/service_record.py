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

"""The services-table row of nova-multidest-conductor.

Nova creates a service's row on first start and announces it with a
versioned notification whose publisher must be one of Nova's own binaries
(``NotificationSource``); for ``nova-multidest-conductor`` that raises.
So the row is created here, without the notification, before Nova's
Service.start looks for it; everything after (heartbeats, version
updates, ``openstack compute service list``) is Nova's own code.
"""

from oslo_utils import uuidutils

from nova.db.main import api as db
from nova import exception as nova_exception
from nova import objects
from nova.objects import service as service_obj

from nova_multidest import vocabulary


def ensure(context, host, topic):
    binary = vocabulary.CONDUCTOR_BINARY
    service = objects.Service.get_by_host_and_binary(context, host, binary)
    if service is not None:
        return service
    try:
        db.service_create(context, {
            'host': host, 'binary': binary, 'topic': topic,
            'report_count': 0, 'version': service_obj.SERVICE_VERSION,
            'uuid': uuidutils.generate_uuid()})
    except (nova_exception.ServiceBinaryExists,
            nova_exception.ServiceTopicExists):
        pass
    return objects.Service.get_by_host_and_binary(context, host, binary)
