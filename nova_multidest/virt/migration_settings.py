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

"""Nova's ``[libvirt]`` live-migration settings, for the source stream.

Nova's libvirt driver turns these options into libvirt flags and job
parameters for its one destination. A multi-destination stream bypasses
libvirt's migration API (``dataplane/source_stream.py`` drives QEMU over
QMP), so this module reads the same options and hands the engine what
libvirt would have given QEMU, with the ``[multidest]`` overrides where
an operator set one:

* bandwidth: ``[multidest] max_bandwidth_mb``, else
  ``live_migration_bandwidth`` (0: unlimited);
* downtime: ``[multidest] downtime_limit_ms`` (fixed), else Nova's own
  steps (``nova.virt.libvirt.migration.downtime_steps``);
* completion timeout and action: ``migration_limits.completion_timeout``
  and ``live_migration_timeout_action``;
* ``live_migration_permit_auto_converge``: QEMU's ``auto-converge``;
* ``live_migration_parallel_connections`` > 1: multifd channels;
* ``live_migration_permit_post_copy``: post-copy needs a return path to
  one destination, so it is unavailable here, and Nova's own fallback
  applies (auto-converge when permitted, force complete pauses);
* TLS: ``[multidest] tls``, else ``live_migration_with_native_tls``,
  with QEMU's x509 files unless ``[multidest] tls_*_file`` name others.
"""

import os

from oslo_log import log as logging

from nova.virt.libvirt import migration as libvirt_migration

from nova_multidest import conf
from nova_multidest.dataplane import source_stream
from nova_multidest import migration_limits

CONF = conf.CONF
LOG = logging.getLogger(__name__)

MiB = 1 << 20
# Where QEMU (and Nova's live_migration_with_native_tls) keeps its
# x509 files: QEMU's default_tls_x509_cert_dir.
QEMU_X509_DIR = os.path.join(os.sep, 'etc', 'pki', 'qemu')


def stream_settings(instance, warm_up=False):
    """StreamSettings of a multi-destination migration of ``instance``."""
    multidest = CONF.multidest
    nova = CONF.libvirt
    memory_mb = instance.flavor.memory_mb
    if multidest.downtime_limit_ms is not None:
        downtime, steps = multidest.downtime_limit_ms, ()
    else:
        downtime = nova.live_migration_downtime
        steps = tuple(libvirt_migration.downtime_steps(
            migration_limits.data_gb(memory_mb)))
    bandwidth_mb = (multidest.max_bandwidth_mb
                    if multidest.max_bandwidth_mb is not None
                    else nova.live_migration_bandwidth)
    capabilities = {}
    if nova.live_migration_permit_auto_converge:
        capabilities['auto-converge'] = True
    if nova.live_migration_permit_post_copy:
        LOG.warning('[libvirt] live_migration_permit_post_copy is set, but '
                    'a migration to several destinations cannot use '
                    'post-copy (it needs a return path to one destination): '
                    '%s', 'auto-converge is used instead'
                    if capabilities else 'a forced switch-over pauses the '
                    'guest until the rest is copied', instance=instance)
    channels = nova.live_migration_parallel_connections
    return source_stream.StreamSettings(
        capabilities=capabilities,
        max_bandwidth=bandwidth_mb * MiB,
        downtime_limit_ms=downtime,
        downtime_steps=steps,
        warm_up=warm_up,
        warm_up_exit=multidest.warm_up_exit,
        warm_up_percent=multidest.warm_up_percent,
        switch_over_timeout=multidest.switch_over_timeout,
        completion_timeout=migration_limits.completion_timeout(memory_mb),
        timeout_action=nova.live_migration_timeout_action,
        multifd_channels=channels if channels > 1 else 0)


def tls_files():
    """(cert, key, CA) of stream hops, or None when TLS is off."""
    multidest = CONF.multidest
    enabled = (multidest.tls if multidest.tls is not None
               else CONF.libvirt.live_migration_with_native_tls)
    if not enabled:
        return None
    return (multidest.tls_cert_file or
            os.path.join(QEMU_X509_DIR, 'server-cert.pem'),
            multidest.tls_key_file or
            os.path.join(QEMU_X509_DIR, 'server-key.pem'),
            multidest.tls_ca_file or
            os.path.join(QEMU_X509_DIR, 'ca-cert.pem'))
