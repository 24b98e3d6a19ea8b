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

"""nova-multidest-conductor: the service that runs multi-destination live
migrations.

It reads nova.conf like every Nova service (plus our ``[multidest]``
options), registers as a Nova service (``openstack compute service list``
shows it) and serves ``[multidest] conductor_topic``. One worker: each
migration is a long task whose threads wait on computes, and recovery at
start must not run twice at once.
"""

from nova import monkey_patch; monkey_patch.patch(backend='threading')  # noqa

import sys  # noqa: E402

from oslo_log import log as logging  # noqa: E402
from oslo_reports import guru_meditation_report as gmr  # noqa: E402
from oslo_reports import opts as gmr_opts  # noqa: E402

from nova import config  # noqa: E402
from nova import objects  # noqa: E402
from nova import service  # noqa: E402
from nova import thread_pool_factory  # noqa: E402
from nova import version  # noqa: E402

from nova_multidest import conf  # noqa: E402
from nova_multidest import vocabulary  # noqa: E402

CONF = conf.CONF
MANAGER = 'nova_multidest.conductor.manager.MultiDestConductorManager'


def main():
    config.parse_args(sys.argv)
    logging.setup(CONF, 'nova')
    objects.register_all()
    gmr_opts.set_defaults(CONF)
    objects.Service.enable_min_version_cache()
    gmr.TextGuruMeditation.setup_autorun(version, conf=CONF)

    server = service.Service.create(
        binary=vocabulary.CONDUCTOR_BINARY,
        topic=CONF.multidest.conductor_topic, manager=MANAGER)
    thread_pool_factory.reset_all_executors()
    service.serve(server, workers=1)
    service.wait()
