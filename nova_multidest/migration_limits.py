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

"""How long a multi-destination migration may take, for every service.

The source's compute host enforces the completion timeout
(``dataplane/source_stream.py``); the conductor waits for destination
reports a little longer than that. Both compute it here, from the same
nova.conf, so that they agree.
"""

import nova.conf  # noqa: F401  (registers Nova's [libvirt] options)

from nova_multidest import conf

CONF = conf.CONF

# The conductor's bound on a migration without a completion timeout.
UNBOUNDED_WAIT = 24 * 3600


def data_gb(memory_mb):
    """GiB Nova counts for a migration copying ``memory_mb`` of memory.

    Nova's ``LibvirtDriver._live_migration_data_gb`` without disks (a
    multi-destination migration copies no disk through the driver): the
    guest's memory, at least 2 GiB.
    """
    return max(2.0, memory_mb / 1024.0)


def completion_timeout(memory_mb):
    """Seconds from the start of streaming to the timeout action; 0: none.

    ``[multidest] completion_timeout`` wins when set; else Nova's
    ``[libvirt] live_migration_completion_timeout`` per GiB.
    """
    if CONF.multidest.completion_timeout is not None:
        return CONF.multidest.completion_timeout
    return int(CONF.libvirt.live_migration_completion_timeout *
               data_gb(memory_mb))


def conductor_wait(memory_mb):
    """Seconds the conductor waits for destinations to report.

    The source acts at the completion timeout; a forced switch-over may
    then take ``switch_over_timeout`` and the election its own timeout.
    """
    timeout = completion_timeout(memory_mb) or UNBOUNDED_WAIT
    return (timeout + CONF.multidest.switch_over_timeout +
            CONF.multidest.election_timeout)
