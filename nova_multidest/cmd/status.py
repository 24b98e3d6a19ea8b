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

"""nova-multidest-status: checks an operator runs around an upgrade.

``nova-multidest-status upgrade check`` (oslo.upgradecheck, like
``nova-status``) reads nova.conf and Nova's databases and asks every
compute host over RPC, so that a rolling upgrade of this package (pip in
each container) can be checked before and after: the conductor is up,
every compute Nova lists as up runs the driver at an RPC version this
release can talk to, the stream ports and TLS files are usable, nova-api
has the filter, and no group is left half done. Each result names the
host and what to do.
"""

import collections
import configparser
import os
import sys

from concurrent import futures
import oslo_messaging as messaging
from oslo_upgradecheck import common_checks
from oslo_upgradecheck import upgradecheck
from oslo_utils import versionutils

from nova import config
from nova import context as nova_context
from nova import objects
from nova import servicegroup

from nova_multidest.compute import rpcapi as compute_rpcapi
from nova_multidest import conf
from nova_multidest.dataplane import protocol
from nova_multidest import exceptions
from nova_multidest.virt import migration_settings
from nova_multidest import vocabulary

TLS_OPTIONS = ('tls_cert_file', 'tls_key_file', 'tls_ca_file')

CONF = conf.CONF
Code = upgradecheck.Code
Result = upgradecheck.Result
COMPUTE_BINARY = 'nova-compute'
API_PIPELINE = 'composite:openstack_compute_api_v21'
API_FILTER = 'filter:multidest'
API_FILTER_FACTORY = 'nova_multidest.api.filter:filter_factory'
DRIVER = 'multidest.MultiDestLibvirtDriver'
EMULATED_VIRT_TYPE = 'qemu'


def _services(context, binary):
    """(service, is_up) of ``binary`` in every cell."""
    group = servicegroup.API()
    found = []
    for cell in objects.CellMappingList.get_all(context):
        with nova_context.target_cell(context, cell) as cctxt:
            for service in objects.ServiceList.get_by_binary(
                    cctxt, binary, include_disabled=True):
                found.append((service, group.service_is_up(service)))
    return found


def _instances_in_groups(context):
    for cell in objects.CellMappingList.get_all(context):
        with nova_context.target_cell(context, cell) as cctxt:
            yield from objects.InstanceList.get_by_filters(
                cctxt,
                {'deleted': False,
                 'system_metadata': {vocabulary.SYSMETA_ACTIVE:
                                     vocabulary.SYSMETA_ACTIVE_VALUE}},
                expected_attrs=['system_metadata'])


def _result(problems, warnings, success):
    if problems:
        return Result(Code.FAILURE, '\n'.join(problems + warnings))
    if warnings:
        return Result(Code.WARNING, '\n'.join(warnings))
    return Result(Code.SUCCESS, success)


def _ping(context, client, host):
    """``host``'s ping() reply, None if it does not answer.

    A host of the previous release, without ping(), gets rpc_version 1.0.
    """
    try:
        return client.ping(context, host, CONF.multidest.status_probe_timeout)
    except messaging.MessagingTimeout:
        return None
    except (messaging.UnsupportedVersion, messaging.RemoteError):
        # The host serves the topic at a version without ping().
        return {'host': host, 'rpc_version': '1.0'}


class UpgradeChecks(upgradecheck.UpgradeCommands):
    """The checks of ``nova-multidest-status upgrade check``."""

    def __init__(self):
        super().__init__()
        self._replies = None

    def _compute_replies(self):
        """{host: ping() reply or None} of every nova-compute that is up.

        Asked once per run: a host that does not answer costs a probe
        timeout, and several checks need the answers.
        """
        if self._replies is None:
            context = nova_context.get_admin_context()
            hosts = sorted(s.host for s, is_up in _services(
                context, COMPUTE_BINARY) if is_up)
            client = compute_rpcapi.ComputeAPI(version_cap=None)
            with futures.ThreadPoolExecutor(max_workers=8) as pool:
                self._replies = dict(zip(hosts, pool.map(
                    lambda host: _ping(context, client, host), hosts)))
        return self._replies

    def _check_conductor(self):
        context = nova_context.get_admin_context()
        services = _services(context, vocabulary.CONDUCTOR_BINARY)
        up = [s.host for s, is_up in services if is_up]
        down = [s.host for s, is_up in services if not is_up]
        if not up:
            return Result(
                Code.FAILURE,
                'No %(binary)s is up%(down)s: multi-destination migrations '
                'are accepted but never run. Start %(binary)s '
                '(--config-file /etc/nova/nova.conf) beside nova-conductor.'
                % {'binary': vocabulary.CONDUCTOR_BINARY,
                   'down': ' (down on %s)' % ', '.join(down) if down else ''})
        warnings = ['%s on %s is down: start it again, or it finishes '
                    'nothing it left running.'
                    % (vocabulary.CONDUCTOR_BINARY, host) for host in down]
        return _result([], warnings, '%s up on %s.' % (
            vocabulary.CONDUCTOR_BINARY, ', '.join(up)))

    def _check_computes(self):
        replies = self._compute_replies()
        hosts = sorted(replies)
        if not hosts:
            return Result(Code.WARNING, 'No nova-compute is up: nothing to '
                          'check. Run this check again once they are.')
        versions = {host: reply and reply['rpc_version']
                    for host, reply in replies.items()}
        needed = compute_rpcapi.VERSION_CAP
        current = compute_rpcapi.RPC_API_VERSION
        missing = [h for h, v in versions.items() if v is None]
        too_old = [h for h, v in versions.items()
                   if v and not versionutils.is_compatible(needed, v)]
        older = [h for h, v in versions.items()
                 if v and versionutils.is_compatible(needed, v) and
                 not versionutils.is_compatible(current, v)]
        problems, warnings = [], []
        for host in missing:
            text = ('nova-compute on %s is up but does not answer on topic '
                    '%r: set compute_driver = %s in its nova.conf and '
                    'restart it, or disable the service (openstack compute '
                    'service set --disable %s nova-compute) so that no '
                    'migration picks it.' % (
                        host, CONF.multidest.compute_topic, DRIVER, host))
            (warnings if len(missing) < len(hosts) else problems).append(
                text)
        for host in too_old:
            problems.append(
                'nova-compute on %s serves compute RPC %s, older than the '
                '%s this release sends: upgrade nova-multidest on %s and '
                'restart its nova-compute.' % (
                    host, versions[host], needed, host))
        for host in older:
            warnings.append(
                'nova-compute on %s serves compute RPC %s, this release '
                '%s: upgrade nova-multidest on %s and restart its '
                'nova-compute (the conductor keeps sending %s meanwhile).'
                % (host, versions[host], current, host, needed))
        return _result(problems, warnings, 'Every nova-compute that is up '
                       '(%s) serves compute RPC %s.' % (', '.join(hosts),
                                                        current))

    def _check_rounds(self):
        rounds = CONF.multidest.max_rounds
        if rounds == 1:
            return Result(Code.SUCCESS, '[multidest] max_rounds is 1: a '
                          'migration is not retried after a failed round.')
        emulated = sorted(
            host for host, reply in self._compute_replies().items()
            if reply and reply.get('virt_type') == EMULATED_VIRT_TYPE)
        if emulated:
            return Result(
                Code.WARNING,
                '[multidest] max_rounds is %d and nova-compute on %s runs '
                'guests under QEMU without KVM ([libvirt] virt_type = %s), '
                'where a migration started after a failed one can leave out '
                'guest writes (README, "Known issue, QEMU\'s"). Set '
                'max_rounds = 1 in the nova.conf of %s, or confirm that '
                'these hosts\' QEMU is not affected.' % (
                    rounds, ', '.join(emulated), EMULATED_VIRT_TYPE,
                    vocabulary.CONDUCTOR_BINARY))
        return Result(Code.SUCCESS, '[multidest] max_rounds is %d and no '
                      'nova-compute that answers runs QEMU without KVM.'
                      % rounds)

    def _check_ports(self):
        low, high = CONF.multidest.port_min, CONF.multidest.port_max
        if low > high:
            return Result(
                Code.FAILURE,
                '[multidest] port_min (%d) is above port_max (%d): no port '
                'is left for incoming streams. Set port_min <= port_max.'
                % (low, high))
        count = high - low + 1
        if count < CONF.multidest.max_destinations:
            return Result(
                Code.WARNING,
                '[multidest] port_min..port_max (%d..%d) has %d ports, '
                'fewer than max_destinations (%d): a host receives at most '
                '%d streams at once. Widen the range (and open it between '
                'computes).' % (low, high, count,
                                CONF.multidest.max_destinations, count))
        return Result(Code.SUCCESS, 'Streams use ports %d..%d.' % (low, high))

    def _check_tls(self):
        files = migration_settings.tls_files()
        if files is None:
            return Result(Code.SUCCESS, 'TLS is off ([multidest] tls, else '
                                        '[libvirt] live_migration_with_'
                                        'native_tls).')
        problems = []
        for option, path in zip(TLS_OPTIONS, files):
            if not os.access(path, os.R_OK):
                problems.append('%s = %s cannot be read: install it there, '
                                'readable by nova, or set [multidest] %s.'
                                % (option, path, option))
        if problems:
            return Result(Code.FAILURE, '\n'.join(problems))
        try:
            protocol.make_tls_contexts(*files)
        except exceptions.InvalidSettings as e:
            return Result(
                Code.FAILURE,
                'Stream TLS files do not load (%s): %s and %s must be a '
                'matching PEM pair and %s a PEM bundle.' % ((e,) + files))
        return Result(Code.SUCCESS, 'TLS files load.')

    def _check_api_filter(self):
        path = CONF.wsgi.api_paste_config
        if not os.path.isabs(path):
            path = CONF.find_file(path)
        if path is None or not os.path.exists(path):
            return Result(
                Code.WARNING,
                'No %s here ([wsgi] api_paste_config): run this check where '
                'nova-api runs to check its multidest filter.'
                % CONF.wsgi.api_paste_config)
        paste = configparser.ConfigParser(interpolation=None)
        paste.read(path)
        factory = paste.get(API_FILTER, 'paste.filter_factory',
                            fallback=None)
        pipelines = [value.split() for key, value in paste.items(API_PIPELINE)
                     if key not in paste.defaults()] if paste.has_section(
                         API_PIPELINE) else []
        if factory != API_FILTER_FACTORY or not any(
                'multidest' in p for p in pipelines):
            return Result(
                Code.FAILURE,
                '%s lacks the multidest filter: declare [%s] with '
                'paste.filter_factory = %s and add multidest after '
                'keystonecontext in [%s], then restart nova-api (see '
                'etc/nova-multidest/api-paste.ini).' % (
                    path, API_FILTER, API_FILTER_FACTORY, API_PIPELINE))
        return Result(Code.SUCCESS, '%s has the multidest filter.' % path)

    def _check_groups(self):
        context = nova_context.get_admin_context()
        warnings = [
            'Server %s (on %s) has a multi-destination migration in '
            'progress (phase %s): let it end, or restart '
            '%s to finish or roll it back, before upgrading.' % (
                instance.uuid, instance.host,
                instance.system_metadata.get(vocabulary.SYSMETA_PHASE, '?'),
                vocabulary.CONDUCTOR_BINARY)
            for instance in _instances_in_groups(context)]
        journal = os.path.join(CONF.instances_path, 'multidest-journal')
        left = collections.Counter()
        if os.path.isdir(journal):
            for host in os.listdir(journal):
                left[host] = len(os.listdir(os.path.join(journal, host)))
        for host, count in sorted(left.items()):
            if count:
                warnings.append(
                    '%d destination(s) prepared on %s are still journaled '
                    'under %s: restart nova-compute on %s, which cleans '
                    'them up.' % (count, host, os.path.join(journal, host),
                                  host))
        return _result([], warnings, 'No multi-destination migration in '
                       'progress.')

    _upgrade_checks = (
        ('Multi-destination conductor', _check_conductor),
        ('Compute drivers and RPC versions', _check_computes),
        ('Retry rounds', _check_rounds),
        ('Stream ports', _check_ports),
        ('Stream TLS files', _check_tls),
        ('nova-api filter', _check_api_filter),
        ('Migrations in progress', _check_groups),
        ('Policy file JSON to YAML migration',
         (common_checks.check_policy_json, {'conf': CONF})),
    )


def main():
    upgradecheck.register_cli_options(CONF, UpgradeChecks())
    config.parse_args(sys.argv)
    objects.register_all()
    return upgradecheck.run(CONF)
