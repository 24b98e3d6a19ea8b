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

"""The Nova APIs the conductor task talks to, built once per service."""

from nova.compute import rpcapi as compute_rpcapi
from nova.network import neutron
from nova.scheduler.client import query
from nova.scheduler.client import report
from nova import servicegroup
from nova.volume import cinder

from nova_multidest.compute import rpcapi as multidest_compute_rpcapi


class Clients(object):

    def __init__(self):
        self.compute_rpcapi = compute_rpcapi.ComputeAPI()
        self.multidest_compute = multidest_compute_rpcapi.ComputeAPI()
        self.query_client = query.SchedulerQueryClient()
        self.servicegroup_api = servicegroup.API()
        self.network_api = neutron.API()
        self.volume_api = cinder.API()
        self._report_client = None

    @property
    def report_client(self):
        # Built on first use, like Nova's conductor: it reads keystone
        # auth options that tests and deployments set after start-up.
        if self._report_client is None:
            self._report_client = report.report_client_singleton()
        return self._report_client
