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
"""

import oslo_messaging as messaging

from nova.objects import base as objects_base
from nova import rpc

from nova_multidest import conf

CONF = conf.CONF

RPC_API_VERSION = '1.2'
# Raise this only once every compute of a deployment runs a release that
# serves the new version; methods check can_send_version() before using
# anything newer than 1.0.
VERSION_CAP = '1.2'


def encode_secret(secret):
    """Per-migration secrets travel as hex: RPC payloads are JSON."""
    return secret.hex() if isinstance(secret, bytes) else secret


def decode_secret(secret):
    return bytes.fromhex(secret) if isinstance(secret, str) else secret


class ComputeAPI(object):
    """Calls into the compute hosts of one multi-destination migration."""

    def __init__(self, version_cap=VERSION_CAP):
        target = messaging.Target(topic=CONF.multidest.compute_topic,
                                  version=RPC_API_VERSION)
        serializer = objects_base.NovaObjectSerializer()
        self.client = rpc.get_client(target, version_cap=version_cap,
                                     serializer=serializer)

    def _prepare(self, host, timeout=None, version='1.0'):
        kwargs = {'server': host, 'version': version}
        if timeout is not None:
            kwargs['timeout'] = timeout
        return self.client.prepare(**kwargs)

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
        cctxt = self._prepare(migration.dest_compute,
                              timeout=CONF.multidest.prepare_timeout)
        return cctxt.call(ctxt, 'prepare_destination', instance=instance,
                          migration=migration,
                          secret=encode_secret(secret),
                          block_migration=block_migration,
                          migrate_data=migrate_data)

    def start_stream(self, ctxt, instance, destinations, secret, topology,
                     warm_up):
        """Start the source side of the migration.

        ``destinations`` is a list of dicts {'migration_uuid', 'host',
        'agent_address'}. From 1.2 a call that raises the source's error
        if the stream cannot start; an older source is sent a cast (it only
        logs such an error, and the destinations time out).
        """
        args = dict(instance=instance, destinations=destinations,
                    secret=encode_secret(secret), topology=topology,
                    warm_up=warm_up)
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
        """{'host', 'rpc_version'} of ``host``'s endpoint (1.1).

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

    def get_source_guest(self, ctxt, instance):
        """Host-to-host: what a destination needs from the source.

        Returns {'xml': migratable domain XML, 'disk_info': JSON of the
        local disks or None}.
        """
        cctxt = self._prepare(instance.host)
        return cctxt.call(ctxt, 'get_source_guest', instance=instance)
