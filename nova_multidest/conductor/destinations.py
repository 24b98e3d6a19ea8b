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

"""Choosing the destination hosts of a group and claiming them.

Every destination's placement claim is held by that destination's own
Migration record (consumer = migration uuid): the instance's allocation
stays on the source until a winner exists, and one loser's claim can be
dropped without touching anyone else's. The scheduler claims for the
consumer uuid it is given, so we hand it the migration uuid; alternates it
returns are claimed the same way from their allocation requests.
"""

import concurrent.futures
import dataclasses
import typing

from oslo_log import log as logging
from oslo_serialization import jsonutils
from oslo_utils import uuidutils

from nova import availability_zones
from nova.compute import utils as compute_utils
from nova import exception as nova_exception
from nova import objects
from nova.scheduler import utils as scheduler_utils

from nova_multidest import conf
from nova_multidest import exceptions

LOG = logging.getLogger(__name__)
CONF = conf.CONF


@dataclasses.dataclass
class Candidate:
    """A host picked and claimed for the group."""

    host: str
    node: typing.Optional[str]
    migration_uuid: str


def new_migration_uuid():
    return uuidutils.generate_uuid()


def instance_cell(context, instance):
    return objects.InstanceMapping.get_by_instance_uuid(
        context, instance.uuid).cell_mapping


def build_request_spec(context, instance, network_api):
    """The instance's RequestSpec, made ready for a live migration.

    As Nova's LiveMigrationTask prepares it, minus what the API filter
    already refused (ports with resource requests).
    """
    spec = objects.RequestSpec.get_by_instance_uuid(context, instance.uuid)
    spec.reset_forced_destinations()
    port_res_req, req_lvl_params = (
        network_api.get_requested_resource_for_instance(
            context, instance.uuid))
    spec.requested_resources = port_res_req
    spec.request_level_params = req_lvl_params
    spec.generate_request_groups_from_pci_requests()
    scheduler_utils.setup_instance_group(context, spec)
    spec.requested_destination = objects.Destination(
        cell=instance_cell(context, instance))
    spec.ensure_project_and_user_id(instance)
    spec.ensure_network_information(instance)
    compute_utils.heal_reqspec_is_bfv(context, spec, instance)
    return spec


def _failure_domain(context, host):
    if CONF.multidest.spread == 'availability_zone':
        return availability_zones.get_host_availability_zone(context, host)
    if CONF.multidest.spread == 'aggregate':
        aggregates = objects.AggregateList.get_by_host(context, host)
        return frozenset(agg.id for agg in aggregates) or None
    return None


def _spread_order(context, selections, used_domains):
    """Hosts in failure domains not used yet first, scheduler order kept."""
    if CONF.multidest.spread == 'none':
        return list(selections)
    fresh, reused = [], []
    for selection in selections:
        domain = _failure_domain(context, selection.service_host)
        if domain is not None and domain in used_domains:
            reused.append(selection)
        else:
            fresh.append(selection)
            used_domains.add(domain)
    return fresh + reused


def _claim_alternate(context, report_client, spec, selection,
                     migration_uuid):
    alloc_req = jsonutils.loads(selection.allocation_request)
    return report_client.claim_resources(
        context, migration_uuid, alloc_req, spec.project_id, spec.user_id,
        allocation_request_version=selection.allocation_request_version,
        consumer_generation=None)


def _claim_for_new_migration(context, report_client, spec, selection,
                             before_claim):
    migration_uuid = new_migration_uuid()
    before_claim(selection.service_host, selection.nodename, migration_uuid)
    if _claim_alternate(context, report_client, spec, selection,
                        migration_uuid):
        return Candidate(selection.service_host, selection.nodename,
                         migration_uuid)
    return None


def drop_claim(context, report_client, consumer_uuid):
    report_client.delete_allocation_for_instance(
        context, consumer_uuid, consumer_type='migration', force=True)


def schedule(context, query_client, report_client, spec, instance, count,
             exclude, before_claim, pending_claim=None):
    """Pick and claim up to ``count`` hosts from the scheduler.

    One scheduler call returns its selection (claimed for the migration
    uuid we pass) plus alternates, which we claim ourselves, concurrently;
    further calls are made only while hosts are missing.
    ``before_claim(host, node, uuid)`` records a claim's consumer with its
    host: before each alternate's claim, and for the scheduler's own
    selection once its host is known. Until then the consumer is recorded
    by ``pending_claim(uuid)`` (``pending_claim(None)`` clears it), so that
    no Migration record ever exists without a destination host, yet a
    crash during the scheduler call leaves a claim recovery can find.
    Returns fewer than ``count`` candidates when the cloud has no more
    room; raises SchedulingFailed when the first scheduler call fails
    otherwise (a MessagingTimeout, say).
    """
    pending_claim = pending_claim or (lambda consumer_uuid: None)
    picked = []
    seen = set(exclude) | {instance.host}
    used_domains = set()
    while len(picked) < count:
        first_uuid = new_migration_uuid()
        pending_claim(first_uuid)
        spec.ignore_hosts = sorted(seen)
        try:
            selections = query_client.select_destinations(
                context, spec, [first_uuid], return_objects=True,
                return_alternates=True)[0]
        except nova_exception.NoValidHost as error:
            pending_claim(None)
            LOG.info('Scheduler found no more destinations: %s', error,
                     instance=instance)
            break
        except Exception as error:
            # The scheduler may have claimed for first_uuid all the same
            # (a reply lost or late).
            drop_claim(context, report_client, first_uuid)
            pending_claim(None)
            if not picked:
                raise exceptions.SchedulingFailed(reason=error)
            LOG.warning('Scheduler call failed, going on with %d '
                        'destination(s): %s', len(picked), error,
                        instance=instance)
            break
        first = selections[0]
        seen.update(s.service_host for s in selections)
        wanted = _spread_order(context, selections, used_domains)
        wanted = wanted[:count - len(picked)]
        if first in wanted:
            try:
                before_claim(first.service_host, first.nodename, first_uuid)
            except Exception:
                drop_claim(context, report_client, first_uuid)
                raise
            picked.append(Candidate(first.service_host, first.nodename,
                                    first_uuid))
        else:
            drop_claim(context, report_client, first_uuid)
        pending_claim(None)
        alternates = [s for s in wanted if s is not first]
        if alternates:
            with concurrent.futures.ThreadPoolExecutor(
                    len(alternates)) as pool:
                claimed = pool.map(
                    lambda selection: _claim_for_new_migration(
                        context, report_client, spec, selection,
                        before_claim),
                    alternates)
                picked.extend(c for c in claimed if c is not None)
    return picked


def claim_host(context, query_client, report_client, spec, instance, host,
               consumer_uuid):
    """Claim the named ``host`` alone, for ``consumer_uuid``.

    As Nova's live migration to a named host does: the request spec's
    requested destination is that host, so placement and the filters look
    at it alone and the scheduler's claim is the only one. Each call works
    on its own copy of ``spec``, so that the named hosts of a group are
    claimed concurrently. Returns the scheduler's Selection; raises
    NoValidHost if the filters or placement refuse the host; any other
    failure drops whatever claim the call may have made, and raises.
    """
    spec = spec.obj_clone()
    spec.ignore_hosts = [instance.host]
    cell = (spec.requested_destination.cell
            if spec.obj_attr_is_set('requested_destination') and
            spec.requested_destination else None)
    spec.requested_destination = objects.Destination(host=host, cell=cell)
    try:
        return query_client.select_destinations(
            context, spec, [consumer_uuid], return_objects=True,
            return_alternates=False)[0][0]
    except nova_exception.NoValidHost:
        raise
    except Exception:
        # A reply lost or late: the scheduler may have claimed all the same.
        drop_claim(context, report_client, consumer_uuid)
        raise


def check_explicit(instance, hosts):
    """Refuse what the API already refuses, for direct RPC callers too."""
    if len(set(hosts)) != len(hosts):
        raise exceptions.InvalidSettings(
            reason='destination hosts must be distinct, got %s' % hosts)
    if instance.host in hosts:
        raise exceptions.InvalidSettings(
            reason='the source host %s cannot be a destination' %
            instance.host)
    return list(hosts)
