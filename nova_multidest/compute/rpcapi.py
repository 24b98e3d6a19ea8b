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

"""Client of the multi-destination compute endpoint.

nova-compute's own RPC API is versioned by Nova and cannot grow methods
from outside the tree, so the endpoint listens on a topic of its own
(``[multidest] compute_topic``), one server per compute host.
Destination-side calls go to ``migration.dest_compute``, source-side ones
to ``instance.host``.

API version history:

* 1.0 - Initial version.
* 1.1 - Add ping(), for nova-multidest-status upgrade check.
* 1.2 - start_stream is a call with ``report_errors=True``: a source that
  cannot start its stream answers with the error at once.
* 1.3 - Local disks: prepare_destination accepts block migration and
  returns ``disk_agent_address``; get_source_guest takes
  ``block_migration`` and then returns the disks to copy;
  start_stream takes ``block_migration``; new check_source_disks.

ping() may also return ``virt_type``, added without a bump: it is an
optional key the caller reads with get(), and older hosts leave it out.

Which version a host serves is in its compute node's stats
(``STATS_KEY``), which the driver reports with its resources: the
conductor caps its calls at the oldest version among the hosts of one
migration, as Nova caps its own RPCs at the oldest service version.
"""

import oslo_messaging as messaging

from nova import objects
from nova.objects import base as objects_base
from nova import rpc

from nova_multidest import conf
from nova_multidest import exceptions
from nova_multidest import vocabulary

CONF = conf.CONF

RPC_API_VERSION = '1.3'
# Every call of this release works at this version; a newer one is sent
# only to hosts whose compute node reports it (``host_version``), or
# through a client capped at the oldest version of the hosts involved
# (``for_hosts``).
VERSION_CAP = '1.2'
# The first version that copies local disks.
DISKS_VERSION = '1.3'
# Key of the version in each compute node's stats.
STATS_KEY = vocabulary.COMPUTE_STATS_KEY


def version_tuple(version):
    return tuple(int(part) for part in str(version).split('.'))


def host_version(context, host):
    """The compute RPC version ``host`` serves, from its node record.

    Releases before 1.2 report none: they serve 1.0 or 1.1, neither of
    which copies disks, so they count as the oldest.
    """
    oldest = '1.0'
    try:
        nodes = objects.ComputeNodeList.get_all_by_host(context, host)
    except Exception:
        return oldest
    versions = [(node.stats or {}).get(STATS_KEY, oldest)
                for node in nodes] or [oldest]
    return min(versions, key=version_tuple)


def oldest_version(context, hosts):
    """The oldest version among ``hosts``, at most this release's."""
    versions = [host_version(context, host) for host in hosts]
    versions.append(RPC_API_VERSION)
    return min(versions, key=version_tuple)


def encode_secret(secret):
    """Per-migration secrets travel as hex: RPC payloads are JSON."""
    return secret.hex() if isinstance(secret, bytes) else secret


def decode_secret(secret):
    return bytes.fromhex(secret) if isinstance(secret, str) else secret


class ComputeAPI(object):
    """Calls into the compute hosts of one multi-destination migration."""

    def __init__(self, version_cap=RPC_API_VERSION):
        target = messaging.Target(topic=CONF.multidest.compute_topic,
                                  version=RPC_API_VERSION)
        serializer = objects_base.NovaObjectSerializer()
        self.version_cap = version_cap
        self.client = rpc.get_client(target, version_cap=version_cap,
                                     serializer=serializer)

    @classmethod
    def for_hosts(cls, context, hosts):
        """A client capped at the oldest version ``hosts`` serve."""
        return cls(version_cap=oldest_version(context, hosts))

    def can_copy_disks(self):
        return self.client.can_send_version(DISKS_VERSION)

    def _prepare(self, host, timeout=None, version='1.0'):
        kwargs = {'server': host, 'version': version}
        if timeout is not None:
            kwargs['timeout'] = timeout
        return self.client.prepare(**kwargs)

    def _disk_version(self, block_migration, method):
        """1.2 for a block migration, refused if the cap is lower."""
        if not block_migration:
            return '1.0'
        if not self.can_copy_disks():
            raise exceptions.InvalidSettings(
                reason='%s with local disks needs compute RPC version %s '
                       'of nova-multidest, but calls are capped at %s; '
                       'upgrade every compute host of the migration'
                       % (method, DISKS_VERSION, self.version_cap))
        return DISKS_VERSION

    def prepare_destination(self, ctxt, instance, migration, secret,
                            block_migration, migrate_data=None):
        """Make ``migration.dest_compute`` ready to receive the stream.

        ``migrate_data`` is the LibvirtLiveMigrateData that Nova's
        check_can_live_migrate_destination returned for that host, with
        ``vifs`` describing its inactive port bindings. Returns a dict:
        ``agent_address`` ([host, port] of the stream agent),
        ``migrate_data`` (as updated by the driver's pre-live-migration)
        and ``attachment_ids`` ({volume_id: attachment_id} created there,
        which the conductor deletes for a loser and makes the BDM's for
        the winner).
        """
        cctxt = self._prepare(
            migration.dest_compute, timeout=CONF.multidest.prepare_timeout,
            version=self._disk_version(block_migration,
                                       'prepare_destination'))
        return cctxt.call(ctxt, 'prepare_destination', instance=instance,
                          migration=migration,
                          secret=encode_secret(secret),
                          block_migration=block_migration,
                          migrate_data=migrate_data)

    def start_stream(self, ctxt, instance, destinations, secret, topology,
                     warm_up, block_migration=False):
        """Start the source side of the migration.

        ``destinations`` is a list of dicts {'migration_uuid', 'host',
        'agent_address'}, plus 'disk_agent_address' with
        ``block_migration`` (1.3). From 1.2 a call that raises the source's
        error if the stream cannot start; an older source is sent a cast
        (it only logs such an error, and the destinations time out).
        """
        args = dict(instance=instance, destinations=destinations,
                    secret=encode_secret(secret), topology=topology,
                    warm_up=warm_up)
        if block_migration:
            cctxt = self._prepare(instance.host, version=self._disk_version(
                block_migration, 'start_stream'))
            return cctxt.call(ctxt, 'start_stream', report_errors=True,
                              block_migration=True, **args)
        if self.client.can_send_version('1.2'):
            cctxt = self._prepare(instance.host, version='1.2')
            return cctxt.call(ctxt, 'start_stream', report_errors=True,
                              **args)
        cctxt = self._prepare(instance.host)
        cctxt.cast(ctxt, 'start_stream', **args)

    def wait_destination(self, ctxt, instance, migration, timeout):
        """'completed', 'failed' or 'timeout', within ``timeout`` s."""
        cctxt = self._prepare(migration.dest_compute,
                              timeout=int(timeout) + 30)
        return cctxt.call(ctxt, 'wait_destination', instance=instance,
                          migration=migration, timeout=timeout)

    def switch_over(self, ctxt, instance):
        cctxt = self._prepare(instance.host)
        cctxt.cast(ctxt, 'switch_over', instance=instance)

    def abort_stream(self, ctxt, instance):
        cctxt = self._prepare(instance.host)
        cctxt.cast(ctxt, 'abort_stream', instance=instance)

    def resume_destination(self, ctxt, instance, migration):
        cctxt = self._prepare(migration.dest_compute)
        return cctxt.call(ctxt, 'resume_destination', instance=instance,
                          migration=migration)

    def revert_destination(self, ctxt, instance, migration):
        cctxt = self._prepare(migration.dest_compute)
        return cctxt.call(ctxt, 'revert_destination', instance=instance,
                          migration=migration)

    def resume_source(self, ctxt, instance):
        cctxt = self._prepare(instance.host)
        return cctxt.call(ctxt, 'resume_source', instance=instance)

    def cleanup_source(self, ctxt, instance, migration, migrate_data=None):
        """Remove the source copy once the winner runs.

        Sent to ``migration.source_compute`` (``instance.host`` may already
        name the winner). Call it before the BDMs point at the winner's
        attachments: the source disconnects the volumes it has. Pass the
        winner's ``migrate_data`` so that shared storage is never deleted;
        without it the source keeps its disks and directory.
        """
        cctxt = self._prepare(migration.source_compute)
        return cctxt.call(ctxt, 'cleanup_source', instance=instance,
                          migration=migration, migrate_data=migrate_data)

    def ping(self, ctxt, host, timeout):
        """{'host', 'rpc_version', 'virt_type'} of ``host``'s endpoint (1.1).

        The upgrade check asks every compute, whatever the cap: a host
        that serves only 1.0 answers UnsupportedVersion (or RemoteError),
        one that does not serve the topic at all lets the call time out.
        """
        cctxt = self.client.prepare(server=host, version='1.1',
                                    timeout=timeout)
        return cctxt.call(ctxt, 'ping')

    def source_status(self, ctxt, instance):
        cctxt = self._prepare(instance.host)
        return cctxt.call(ctxt, 'source_status', instance=instance)

    def get_source_guest(self, ctxt, instance, block_migration=False):
        """Host-to-host: what a destination needs from the source.

        Returns {'xml': migratable domain XML}; with ``block_migration``
        (1.2) also 'disk_info' (Nova's JSON of the local disks, for its
        pre-live-migration) and 'disks' (those the source mirrors:
        dicts of name, size, shallow).
        """
        kwargs = {}
        version = self._disk_version(block_migration, 'get_source_guest')
        if block_migration:
            kwargs['block_migration'] = True
        cctxt = self._prepare(instance.host, version=version)
        return cctxt.call(ctxt, 'get_source_guest', instance=instance,
                          **kwargs)

    def check_source_disks(self, ctxt, instance):
        """None if the source can mirror every disk it would copy (1.2).

        Otherwise the reason, naming the disk.
        """
        cctxt = self._prepare(instance.host, version=self._disk_version(
            True, 'check_source_disks'))
        return cctxt.call(ctxt, 'check_source_disks', instance=instance)
