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

"""The project's randomized campaign, on Nova's functional harness.

Every run boots a server and live-migrates it to several destinations,
drawn at random from ``(seed, index)`` so that any run can be replayed
alone: the number of destinations N, a fault at a random phase on each
destination with probability p, sometimes a fault of the source itself,
the kind of server (plain, with a port, with a port and a volume),
warm-up, abort or force complete, and a restart of the conductor or of
the source or a destination compute at a chosen moment (a call held
until the restart, or a random delay).

After every run it checks, from Nova's records and the fake hypervisors,
what an operator is promised: the group ends within a bound (no hang);
the server is ACTIVE with exactly one domain, running, on
``instance.host``; no allocation, port binding, volume attachment,
domain, instance directory, journal entry or in-progress Migration is
left anywhere else; two copies never run at once (sampled all along the
run); every compute starts; no faulted destination wins; and, when
nothing but destination faults happened, the migration succeeds exactly
when a chosen destination had no fault.

    tools/run campaign [--runs N] [--p P ...] [--seed S] [--workers W]

writes one JSON line per run (the file is resumed when it exists), and
prints success per (N, p) next to 1 - p^N, with source-side (correlated)
faults, restarts and aborts apart. Runs go by batches, each in a worker
process with one harness (one cloud) that serves every run of the batch:
each run deletes its server and port, and after each one the cloud must
hold nothing of it (``CampaignHarness.leftovers``), or the batch ends
there. A hang or a broken harness costs one batch only; each record
has the run's wall and CPU seconds per phase, for profiles.
``tests/functional/test_campaign.py`` runs a short fixed-seed subset in
the functional tier.
"""

import argparse
import collections
import contextlib
import dataclasses
import datetime
import json
import os
import random
import subprocess
import sys
import threading
import time
import traceback
import unittest

import fixtures
from nova import objects
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.tests.functional.api import client as api_client

from benchmarks import results
from nova_multidest.virt.hypervisors import fake
from nova_multidest import vocabulary
from tests.functional import base

DESTINATION_COUNTS = (2, 3, 4)
KINDS = ('plain', 'ports', 'volumes')
RESTART_TARGETS = ('conductor', 'source', 'destination')
# Where a restart happens: a call held until the restart, or a delay.
MOMENTS = {
    'conductor': ('scheduling', 'prepare', 'prepare_in_flight', 'stream',
                  'election', 'bookkeeping', 'delay'),
    'source': ('prepare', 'stream', 'election', 'bookkeeping', 'delay'),
    'destination': ('prepare', 'stream', 'election', 'bookkeeping',
                    'delay'),
}
DEFAULT_PS = (0.1, 0.3)
TITLE = 'Randomized fault campaign on Nova\'s functional harness'
COMPUTES = 5

# Bounds of one run, in seconds. The harness runs with short timeouts of
# its own (see CampaignHarness.setUp), so a group that does not end
# within HANG_TIMEOUT is stuck.
HANG_TIMEOUT = 150
SETTLE_TIMEOUT = 30
GATE_TIMEOUT = 30
SAMPLE_INTERVAL = 0.005
# How often the end of a group is looked for in the database, and the
# server's deletion through the API (a GET costs as much CPU as a run's
# step).
WATCH_INTERVAL = 0.2
POLL_INTERVAL = 0.5
# Seconds between two wake-ups of an idle pool thread (see setUp).
IDLE_WORKER_WAKEUP = 1.0
SETUP_TRIES = 3
# Polls (0.5 s apart) a server may take to boot on a loaded machine.
BOOT_RETRIES = 300


@dataclasses.dataclass
class Scenario:
    """One run, drawn from (seed, index) alone."""

    seed: int
    index: int
    n: int
    p: float
    named: bool
    kind: str
    source_slot: int
    # Fault phase per destination slot (0..COMPUTES-2: the hosts other
    # than the source, in a drawn order); named runs use the first n.
    faults: dict
    source_fault: str = None
    warm_up: bool = False
    action: str = None
    action_delay: float = 0.0
    restart: str = None
    moment: str = None
    lose_held_call: bool = False
    delay: float = 0.0
    release_delay: float = 0.0
    step_seconds: float = 0.02
    order: list = dataclasses.field(default_factory=list)

    @property
    def plain(self):
        """Only destination faults: the outcome is predictable."""
        return (self.restart is None and self.action != 'abort' and
                self.source_fault is None)


def draw(seed, index, ps=DEFAULT_PS, restart_rate=0.3, source_rate=0.05,
         abort_rate=0.1, warm_up_rate=0.2):
    """The scenario of run ``index``: every value drawn in a fixed order."""
    rng = random.Random('%d/%d' % (seed, index))
    n = rng.choice(DESTINATION_COUNTS)
    p = rng.choice(tuple(ps))
    named = rng.random() < 0.5
    kind = rng.choice(KINDS)
    source_slot = rng.randrange(COMPUTES)
    order = list(range(COMPUTES - 1))
    rng.shuffle(order)
    faults = {}
    for slot in range(COMPUTES - 1):
        faulty = rng.random() < p
        phase = rng.choice(fake.PHASES)
        if faulty:
            faults[slot] = phase
    source_fault = rng.choice(fake.SOURCE_PHASES)
    if rng.random() >= source_rate:
        source_fault = None
    warm_up = rng.random() < warm_up_rate
    abort = rng.random() < abort_rate
    action = 'abort' if abort else ('force_complete' if warm_up else None)
    action_delay = rng.uniform(0.0, 0.3)
    restart = rng.choice(RESTART_TARGETS)
    if rng.random() >= restart_rate:
        restart = None
    moment = rng.choice(MOMENTS[restart or 'conductor'])
    lose = rng.random() < 0.5
    delay = rng.uniform(0.0, 1.0)
    release_delay = rng.uniform(0.0, 2.0)
    step_seconds = rng.choice((0.01, 0.02, 0.04))
    return Scenario(
        seed=seed, index=index, n=n, p=p, named=named, kind=kind,
        source_slot=source_slot, faults=faults, source_fault=source_fault,
        warm_up=warm_up, action=action, action_delay=action_delay,
        restart=restart, moment=moment if restart else None,
        lose_held_call=lose if restart else False, delay=delay,
        release_delay=release_delay, step_seconds=step_seconds, order=order)


def _endpoint_host(args, kwargs):
    """Destination of a call as the compute endpoint receives it."""
    migration = kwargs.get('migration', args[2] if len(args) > 2 else None)
    return getattr(migration, 'dest_compute', None)


def _held_by(gate, real):
    def held(*args, **kwargs):
        gate.hold(*args, **kwargs)
        return real(*args, **kwargs)
    return held


class CopySampler(threading.Thread):
    """Looks, all along a run, for two running copies of the server."""

    def __init__(self, connections, server_id):
        super().__init__(daemon=True, name='campaign-sampler')
        self.connections = connections
        self.server_id = server_id
        self.samples = 0
        self.violation = None
        self._finished = threading.Event()

    def running_on(self):
        hosts = []
        with fake.guests_settled():
            for host, conn in self.connections.items():
                for domain in list(conn._vms.values()):
                    if (domain.UUIDString() == self.server_id and
                            domain.info()[0] ==
                            fakelibvirt.VIR_DOMAIN_RUNNING):
                        hosts.append(host)
        return hosts

    def run(self):
        while not self._finished.is_set():
            hosts = self.running_on()
            self.samples += 1
            if len(hosts) > 1 and self.violation is None:
                self.violation = 'two running copies at once: %s' % hosts
            self._finished.wait(SAMPLE_INTERVAL)

    def stop(self):
        self._finished.set()
        self.join(5)


class CampaignHarness(base.MultiDestMigrationTestBase):
    """Nova with five computes; runs scenarios one after the other.

    ``scenarios`` and ``sink`` (called with each run's record) are set
    before ``run_batch`` runs. A run that leaves the harness unusable
    (a hang, a compute that cannot start, a server that cannot be
    deleted) ends the batch: the next one gets a fresh harness.
    """

    COMPUTES = COMPUTES
    scenarios = ()
    sink = None

    def setUp(self):
        started = time.monotonic()
        super().setUp()
        # Nova's test base has every idle worker of every thread pool wake
        # up 100 times a second (so that its clean-up is quick); a cloud
        # that serves many runs spent most of its CPU there.
        self.useFixture(fixtures.MonkeyPatch(
            'futurist._thread.ThreadWorker.MAX_IDLE_FOR', IDLE_WORKER_WAKEUP))
        # Short limits: a run must end well within HANG_TIMEOUT.
        self.flags(rpc_response_timeout=20)
        self.flags(prepare_timeout=20, completion_timeout=30,
                   election_timeout=5, group='multidest')
        self.admin_api.microversion = '2.80'
        self.connections = {host: self.fake_connection(host)
                            for host in self.hostnames}
        self.dirty = None
        # Looked up once: the image list is an API call per boot otherwise.
        self.image_uuid = self._build_server()['imageRef']
        self.baseline_ports = set(self.neutron._ports)
        self.baseline_directories = set(
            os.listdir(base.CONF.instances_path)) | {'multidest-journal'}
        self.setup_seconds = round(time.monotonic() - started, 2)

    def leftovers(self):
        """What earlier runs left in this cloud; empty between two runs.

        Every run deletes its server (and its port), so nothing of any
        earlier run may remain: a domain, an allocation, a Migration in
        progress, a port or port binding, a volume attachment, a journal
        entry, an instance directory, a relay of the fake hypervisor.
        """
        found = []
        for host, conn in self.connections.items():
            if conn._vms:
                found.append('domains on %s: %s' % (host, sorted(
                    d.UUIDString() for d in conn._vms.values())))
        for host, rp_uuid in self.compute_rp_uuids.items():
            held = self.placement.get(
                '/resource_providers/%s/allocations' % rp_uuid
            ).body['allocations']
            if held:
                found.append('allocations on %s: %s' % (host, sorted(held)))
        busy = [(m.instance_uuid, m.dest_compute, m.status) for m in
                objects.MigrationList.get_by_filters(
                    self.cell_context(), {'deleted': False})
                if m.status not in vocabulary.MigrationStatus.NOVA_FINAL]
        if busy:
            found.append('migrations in progress: %s' % busy)
        ports = [port['id'] for port in self.neutron._ports.values()
                 if port['id'] not in self.baseline_ports]
        if ports:
            found.append('ports: %s' % ports)
        bindings = {port_id: sorted(hosts) for port_id, hosts in
                    self.neutron._port_bindings.items()
                    if hosts and port_id not in self.baseline_ports}
        if bindings:
            found.append('port bindings: %s' % bindings)
        attachments = {volume_id: sorted(attachments) for
                       volume_id, attachments in
                       self.cinder.volume_to_attachment.items()
                       if attachments}
        if attachments:
            found.append('volume attachments: %s' % attachments)
        journal = os.path.join(base.CONF.instances_path, 'multidest-journal')
        entries = {host: os.listdir(os.path.join(journal, host))
                   for host in self.hostnames
                   if os.path.isdir(os.path.join(journal, host))}
        entries = {host: names for host, names in entries.items() if names}
        if entries:
            found.append('journal entries: %s' % entries)
        directories = sorted(set(os.listdir(base.CONF.instances_path)) -
                             self.baseline_directories)
        if directories:
            found.append('instance directories: %s' % directories)
        streams = fake.open_streams()
        if streams:
            found.append('streams of the fake hypervisor still open: %s' %
                         streams)
        return found

    def run_batch(self):
        for scenario in self.scenarios:
            record = self.run_scenario(scenario)
            record['harness_setup_seconds'] = self.setup_seconds
            self.setup_seconds = 0
            self.sink(record)
            if self.dirty:
                break

    # -- one run -------------------------------------------------------------

    def run_scenario(self, scenario):
        started = time.monotonic()
        cpu_started = time.process_time()
        record = dataclasses.asdict(scenario)
        record['faults'] = {str(k): v for k, v in scenario.faults.items()}
        record.update(violations=[], restart_done=False, action_status=None)
        log_start = len(self.stdlog.logger.output)
        run = _Run(self, scenario, record)
        try:
            run.execute()
        except Exception:
            record['violations'].append(
                'campaign error: %s' % traceback.format_exc())
            self.dirty = self.dirty or 'campaign error'
        finally:
            run.close()
        record['seconds'] = round(time.monotonic() - started, 2)
        # The whole process's CPU: what a run costs, whatever the load.
        record['cpu_seconds'] = round(time.process_time() - cpu_started, 2)
        if record['violations'] or record.get('hang'):
            record['log'] = self.stdlog.logger.output[log_start:]
        if self.dirty:
            record['harness'] = self.dirty
        return record


class _Run(object):
    """The steps of one scenario on one harness."""

    def __init__(self, harness, scenario, record):
        self.h = harness
        self.s = scenario
        self.record = record
        self.violations = record['violations']
        self.stack = contextlib.ExitStack()
        self.gates = []
        self.ended = threading.Event()
        self.server = None
        self.port_id = None
        self.sampler = None
        self.threads = []
        self.phases = record.setdefault('phases', {})
        self._phase_start = time.monotonic()
        others = [host for i, host in enumerate(harness.hostnames)
                  if i != scenario.source_slot]
        self.source = harness.hostnames[scenario.source_slot]
        self.slots = [others[i] for i in scenario.order]
        self.faulty = {self.slots[slot]: phase
                       for slot, phase in scenario.faults.items()}

    def _phase_done(self, name):
        """Record how long the phase that ends now took (for profiles)."""
        now = time.monotonic()
        self.phases[name] = round(now - self._phase_start, 3)
        self._phase_start = now

    # -- set-up ---------------------------------------------------------------

    def execute(self):
        h, s = self.h, self.s
        fake.clear_faults()
        fake.configure(steps=10, step_seconds=s.step_seconds)
        h.notifier.reset()
        try:
            self.server = self._boot()
            self._phase_done('boot')
        except Exception:
            # Not the product's fault (the machine is loaded): the run is
            # done again later, on a fresh harness.
            self.record['setup_error'] = traceback.format_exc(limit=2)
            self.h.dirty = 'server did not boot'
            return
        for host, phase in self.faulty.items():
            fake.inject_fault(host, phase)
        if s.source_fault:
            fake.inject_fault(self.source, s.source_fault)
        self.record.update(source=self.source, faulty=self.faulty,
                           server=self.server['id'])
        gate = self._install_gate()
        self.sampler = CopySampler(h.connections, self.server['id'])
        self.sampler.start()
        args = {'warm_up': s.warm_up}
        if s.named:
            args['destinations'] = self.slots[:s.n]
        else:
            args['count'] = s.n
        self.requested_at = time.monotonic()
        try:
            h.request_migration(self.server, **args)
        except api_client.OpenStackApiException as error:
            self.violations.append('request refused: %s' % error)
            return
        self._watch_group_end()
        if s.action:
            self._spawn(self._act)
        if s.restart:
            self._restart(gate)
        if not self.ended.wait(self._hang_deadline() - time.monotonic()):
            self.record['hang'] = True
            self.violations.append('hang: group not ended after %d s: %s' %
                                   (HANG_TIMEOUT, self._state()))
            self.h.dirty = 'hang'
            return
        self.record['group_seconds'] = round(
            self.ended_at - self.requested_at, 2)
        self._phase_done('group')
        for gate in self.gates:
            gate.release()
        self._check()
        self._phase_done('check')

    def _boot(self):
        h, s = self.h, self.s
        networks = 'none'
        if s.kind in ('ports', 'volumes'):
            port = h.neutron.create_port()['port']
            self.port_id = port['id']
            networks = [{'port': port['id']}]
        body = h._build_server(networks=networks, host=self.source,
                               image_uuid=h.image_uuid)
        server = h.admin_api.post_server({'server': body})
        self.server = server
        server = h._wait_for_server_parameter(
            server, {'status': 'ACTIVE'}, max_retries=BOOT_RETRIES)
        if s.kind == 'volumes':
            volume_id = h.new_uuid()
            h.api.post_server_volume(
                server['id'], {'volumeAttachment': {'volumeId': volume_id}})
            base.wait_until(
                lambda: volume_id in h.cinder.volume_ids_for_instance(
                    server['id']),
                timeout=BOOT_RETRIES / 2,
                message='volume %s never attached' % volume_id)
        return server

    def _spawn(self, func, *args):
        thread = threading.Thread(target=self._guarded, args=(func,) + args,
                                  daemon=True)
        thread.start()
        self.threads.append(thread)

    def _guarded(self, func, *args):
        try:
            func(*args)
        except Exception:
            self.violations.append('campaign error in %s: %s' % (
                func.__name__, traceback.format_exc()))

    def _hang_deadline(self):
        """One bound from the request on, whatever waited in between."""
        return self.requested_at + HANG_TIMEOUT

    def _watch_group_end(self):
        def watch():
            deadline = self._hang_deadline() + 5
            while time.monotonic() < deadline:
                instance = self.h.group_ended(self.server['id'])
                if instance is not None:
                    self.ended_at = time.monotonic()
                    self.ended.set()
                    return
                time.sleep(WATCH_INTERVAL)
        self._spawn(watch)

    # -- gates --------------------------------------------------------------

    def _gate(self, owner, method, host_of=base.destination_of_call):
        gate = base.CallGate(owner, method, limit=1, host_of=host_of)
        self.stack.enter_context(gate)
        self.gates.append(gate)
        return gate

    def _install_gate(self):
        """Hold the first call of the scenario's restart moment."""
        s = self.s
        if s.restart is None or s.moment == 'delay':
            return None
        from nova.compute import rpcapi as nova_compute_rpcapi
        from nova.scheduler.client import query

        from nova_multidest.compute import rpcapi as compute_rpcapi
        api = compute_rpcapi.ComputeAPI
        if s.moment == 'scheduling':
            return self._gate(query.SchedulerQueryClient,
                              'select_destinations', host_of=None)
        if s.moment == 'prepare_in_flight':
            # In the compute, once the call arrived: one gate holds the
            # first prepare whichever endpoint gets it.
            gate = None
            for host in self.h.hostnames:
                endpoint = self.h.compute_driver(host).multidest
                if gate is None:
                    gate = self._gate(endpoint, 'prepare_destination',
                                      host_of=_endpoint_host)
                else:
                    self.stack.enter_context(fixtures.MockPatchObject(
                        endpoint, 'prepare_destination', _held_by(
                            gate, endpoint.prepare_destination)))
            return gate
        if s.moment == 'bookkeeping':
            return self._gate(nova_compute_rpcapi.ComputeAPI,
                              'post_live_migration_at_destination',
                              host_of=lambda a, k: k.get('host', a[-1]))
        method = {'prepare': 'prepare_destination',
                  'stream': 'wait_destination',
                  'election': 'resume_destination'}[s.moment]
        return self._gate(api, method)

    # -- faults while running -----------------------------------------------

    def _restart(self, gate):
        s = self.s
        if gate is None:
            self.ended.wait(s.delay)
            if self.ended.is_set():
                return
            target = self._restart_target(None)
        else:
            deadline = time.monotonic() + GATE_TIMEOUT
            while not gate.reached.wait(0.05):
                if self.ended.is_set() or time.monotonic() > deadline:
                    # A call that comes later must not wait for a
                    # restart that will not happen.
                    gate.release()
                    self.record['restart_note'] = 'moment never reached'
                    return
            target = self._restart_target(gate.held_hosts[0])
        if target is None:
            self.record['restart_note'] = 'no destination known yet'
            if gate is not None:
                gate.release()
            return
        self.record['restarted'] = target
        if target == 'conductor':
            self.h.restart_multidest_conductor()
        else:
            try:
                self.h.restart_compute_service(target)
            except Exception:
                self.violations.append(
                    'compute %s could not start again: %s' % (
                        target, traceback.format_exc()))
                self.h.dirty = 'compute %s down' % target
        self.record['restart_done'] = True
        if gate is None:
            return
        if s.lose_held_call and s.restart != 'source':
            gate.lose()
        elif s.moment == 'prepare_in_flight':
            # The compute finishes its prepare some time after the new
            # conductor took over, or once the group ended.
            self.ended.wait(s.release_delay)
            gate.release()
        else:
            gate.release()

    def _restart_target(self, held_host):
        s = self.s
        if s.restart == 'conductor':
            return 'conductor'
        if s.restart == 'source':
            return self.source
        if held_host and held_host != self.source:
            return held_host
        chosen = [m.dest_compute for m in
                  self.h.get_migrations(self.server['id'])
                  if m.dest_compute]
        if s.named:
            chosen = chosen or self.slots[:s.n]
        return chosen[0] if chosen else None

    def _act(self):
        """Abort, or force the switch-over of, the running group."""
        h, s = self.h, self.s
        running = None
        while not self.ended.is_set():
            running = [m for m in h.get_migrations(self.server['id'])
                       if m.status == 'running']
            if running:
                break
            self.ended.wait(0.02)
        if not running:
            self.record['action_status'] = 'group ended first'
            return
        self.ended.wait(s.action_delay)
        server_id = self.server['id']
        while not self.ended.is_set():
            running = [m for m in h.get_migrations(server_id)
                       if m.status == 'running']
            if not running:
                self.record['action_status'] = 'nothing running'
                return
            if s.action == 'abort':
                response = h.admin_api.api_delete(
                    '/servers/%s/migrations/%d' % (server_id, running[0].id),
                    check_response_status=None)
            else:
                response = h.admin_api.api_post(
                    '/servers/%s/migrations/%d/action' % (
                        server_id, running[0].id),
                    {'force_complete': None}, check_response_status=None)
            self.record['action_status'] = response.status
            if response.status == 202:
                return
            if response.status not in (400, 404, 409):
                self.violations.append('%s answered %s: %s' % (
                    s.action, response.status, response.body))
                return
            self.ended.wait(0.1)

    # -- checks ---------------------------------------------------------------

    def _state(self):
        instance = self.h.get_instance(self.server['id'])
        return {
            'task_state': instance.task_state,
            'host': instance.host,
            'system_metadata': {k: v for k, v in
                                instance.system_metadata.items()
                                if k.startswith(vocabulary.SYSMETA_PREFIX)},
            'migrations': [(m.dest_compute, m.status) for m in
                           self.h.get_migrations(self.server['id'])],
        }

    def _invariant_violations(self):
        h = self.h
        server_id = self.server['id']
        instance = h.get_instance(server_id)
        host = instance.host
        found = []
        try:
            h.assert_invariants(self.server, host)
        except AssertionError as error:
            found.append('invariants on %s: %s' % (host, error))
        for migration in h.get_migrations(server_id):
            if not migration.dest_compute:
                found.append('migration %s without destination host is '
                             'listed (%s)' % (migration.uuid,
                                              migration.status))
        for compute, entries in self._journal_entries().items():
            found.append('journal entries left on %s: %s' % (compute,
                                                             entries))
        states = {service['host']: service['state'] for service in
                  h.admin_api.get_services(binary='nova-compute')}
        for compute in h.hostnames:
            if states.get(compute) != 'up':
                found.append('compute %s is %s' % (compute,
                                                   states.get(compute)))
        return found

    def _journal_entries(self):
        root = os.path.join(base.CONF.instances_path, 'multidest-journal')
        left = {}
        for compute in self.h.hostnames:
            directory = os.path.join(root, compute)
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            for name in names:
                try:
                    with open(os.path.join(directory, name)) as f:
                        entry = json.load(f)
                except (OSError, ValueError):
                    continue
                if entry.get('instance_uuid') == self.server['id']:
                    left.setdefault(compute, []).append(name)
        return left

    def _check(self):
        h, s = self.h, self.s
        deadline = time.monotonic() + SETTLE_TIMEOUT
        found = self._invariant_violations()
        while found and time.monotonic() < deadline:
            time.sleep(0.5)
            found = self._invariant_violations()
        self.violations.extend(found)
        instance = h.get_instance(self.server['id'])
        result = json.loads(instance.system_metadata.get(
            vocabulary.SYSMETA_LAST_RESULT, '{}'))
        host = instance.host
        migrations = h.get_migrations(self.server['id'])
        chosen = sorted({m.dest_compute for m in migrations
                         if m.dest_compute})
        success = host != self.source
        self.record.update(result=result.get('result'), host=host,
                           chosen=chosen, success=success)
        if result.get('host') not in (None, host):
            self.violations.append('result names %s, server is on %s' % (
                result.get('host'), host))
        if success and host not in chosen:
            self.violations.append('server on %s, not a chosen destination'
                                   ' %s' % (host, chosen))
        if success and host in self.faulty:
            self.violations.append('faulted destination %s (%s) won' % (
                host, self.faulty[host]))
        if s.plain:
            expected = any(c not in self.faulty for c in chosen)
            self.record['expected_success'] = expected
            if expected != success:
                self.violations.append(
                    'outcome %s, expected %s: chosen %s, faults %s' % (
                        'success' if success else 'failure',
                        'success' if expected else 'failure', chosen,
                        self.faulty))
        if s.source_fault == fake.PHASE_SOURCE_START and not s.restart:
            self._check_source_error_travels()
        self.sampler.stop()
        self.record['samples'] = self.sampler.samples
        if self.sampler.violation:
            self.violations.append(self.sampler.violation)
        # Late side effects (a fenced conductor, a late compute reply)
        # show up after the first check; look once more.
        self.violations.extend(v for v in self._invariant_violations()
                               if v not in self.violations)

    def _check_source_error_travels(self):
        message = 'injected %s fault on %s' % (fake.PHASE_SOURCE_START,
                                               self.source)
        faults = self.h.get_instance_faults(self.server['id'])
        if not any(message in (f.message or '') + (f.details or '')
                   for f in faults):
            self.violations.append(
                'the source error is not in the server fault: %s' % [
                    f.message for f in faults])
        # Had the error not travelled, the conductor would have waited
        # out its stream timeout and the fault would say so instead; the
        # time from the request is mostly the destinations' prepare, so
        # it is recorded, not bounded.
        if any('timeout' in (f.message or '').lower() for f in faults):
            self.violations.append(
                'the source error waited for a timeout: %s' % [
                    f.message for f in faults])
        self.record['source_error_seconds'] = round(
            self.ended_at - self.requested_at, 2)

    # -- clean-up -----------------------------------------------------------

    def _deleted(self):
        try:
            self.h.admin_api.get_server(self.server['id'])
        except api_client.OpenStackApiNotFoundException:
            return True
        return False

    def close(self):
        for gate in self.gates:
            gate.release()
        self.stack.close()
        if self.sampler is not None and self.sampler.is_alive():
            self.sampler.stop()
        fake.clear_faults()
        if self.server is None or self.h.dirty:
            return
        try:
            self.h.admin_api.delete_server(self.server['id'])
            base.wait_until(self._deleted, timeout=BOOT_RETRIES / 2,
                            interval=POLL_INTERVAL)
        except Exception:
            self.h.dirty = 'server %s not deleted: %s' % (
                self.server['id'], traceback.format_exc(limit=3))
            return
        for thread in self.threads:
            thread.join(GATE_TIMEOUT)
        if self.port_id is not None:
            port = self.h.neutron.show_port(self.port_id)['port']
            if port.get('device_id') or port.get('binding:host_id'):
                self.violations.append('port %s still bound after the '
                                       'server was deleted: %s' % (
                                           self.port_id, port))
            self.h.neutron.delete_port(self.port_id)
        deadline = time.monotonic() + SETTLE_TIMEOUT
        left = self.h.leftovers()
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = self.h.leftovers()
        if left:
            self.violations.append('left after the server was deleted: %s'
                                   % '; '.join(left))
            self.h.dirty = 'leftovers'
        self._phase_done('delete')


# -- the campaign: batches of runs in worker processes ---------------------

def _worker_main(args):
    """Run the given run indices on one harness; one JSON line each."""
    ps = tuple(args.p)
    scenarios = [draw(args.seed, index, ps, args.restart_rate,
                      args.source_rate) for index in args.indices]
    out = open(args.out, 'a')

    def sink(record):
        out.write(json.dumps(record, sort_keys=True) + '\n')
        out.flush()

    case = CampaignHarness('run_batch')
    case.scenarios = scenarios
    case.sink = sink
    result = unittest.TestResult()
    case.run(result)
    for _, text in result.errors + result.failures:
        sys.stderr.write(text)
    out.close()
    return 0 if result.wasSuccessful() else 1


def _done_indices(path, seed):
    done = {}
    if not os.path.exists(path):
        return done
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get('seed') == seed and not record.get('setup_error'):
                done[record['index']] = record
    return done


def _setup_errors(args):
    errors = set()
    if not os.path.exists(args.out):
        return errors
    with open(args.out) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get('seed') == args.seed and record.get('setup_error'):
                errors.add(record['index'])
    return errors


def _run_worker(args, indices, batch_timeout):
    command = [sys.executable, '-m', 'tests.functional.campaign', 'worker',
               '--seed', str(args.seed), '--out', args.out,
               '--restart-rate', str(args.restart_rate),
               '--source-rate', str(args.source_rate),
               '--indices', ','.join(map(str, indices))]
    for p in args.p:
        command += ['--p', str(p)]
    log_path = args.out + '.worker.log'
    with open(log_path, 'a') as log:
        worker = subprocess.Popen(command, stdout=log, stderr=log)
        try:
            worker.wait(batch_timeout)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
            return 'killed after %d s' % batch_timeout
    return None if worker.returncode == 0 else (
        'exit status %s (see %s)' % (worker.returncode, log_path))


def _campaign_main(args):
    report = results.Report('campaign', TITLE, benchmark='')
    shown = [a for i, a in enumerate(args.argv) if a != '--note' and
             (i == 0 or args.argv[i - 1] != '--note')]
    report.command = 'tools/run campaign %s' % ' '.join(shown)
    todo = [i for i in range(args.first, args.first + args.runs)]
    if args.only is not None:
        todo = [args.only]
    lock = threading.Lock()
    batches = collections.deque()
    failures = []
    tries = collections.Counter()
    done = _done_indices(args.out, args.seed)
    pending = [i for i in todo if i not in done]
    for start in range(0, len(pending), args.batch):
        batches.append(pending[start:start + args.batch])
    print('campaign seed %d: %d runs to do of %d, in %d batches; writing %s'
          % (args.seed, len(pending), len(todo), len(batches), args.out),
          flush=True)

    def work():
        while True:
            with lock:
                if not batches:
                    return
                indices = batches.popleft()
            timeout = len(indices) * (HANG_TIMEOUT + SETTLE_TIMEOUT + 60)
            problem = _run_worker(args, indices, timeout)
            done = _done_indices(args.out, args.seed)
            left = [i for i in indices if i not in done]
            setup_failed = [i for i in left if i in _setup_errors(args)]
            if setup_failed:
                with lock:
                    tries[setup_failed[0]] += 1
                    if tries[setup_failed[0]] > SETUP_TRIES:
                        failures.append('run %d never got a booted server'
                                        % setup_failed[0])
                        batches.clear()
                        return
            elif len(left) == len(indices) and problem:
                # Not one run: the harness itself cannot start.
                with lock:
                    failures.append(problem)
                    batches.clear()
                return
            if left and problem:
                # The run in progress when the worker died or was killed.
                stuck = left.pop(0)
                _append_stuck(args, stuck, problem)
            if left:
                with lock:
                    batches.append(left)
            _progress(args, done, len(todo))

    workers = [threading.Thread(target=work) for _ in range(args.workers)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failures:
        print('The campaign could not run: %s' % '; '.join(failures))
        return 2
    records = [r for i, r in sorted(_done_indices(args.out,
                                                  args.seed).items())
               if i in set(todo)]
    print(summary(records))
    if args.results:
        write_results(args, records, report)
    bad = [r for r in records if r.get('violations') or r.get('hang')]
    return 1 if bad else 0


def _append_stuck(args, index, problem):
    scenario = draw(args.seed, index, tuple(args.p), args.restart_rate,
                    args.source_rate)
    record = dataclasses.asdict(scenario)
    record['faults'] = {str(k): v for k, v in scenario.faults.items()}
    record.update(hang=True, violations=[
        'hang: the worker running this run was stopped: %s' % problem])
    with open(args.out, 'a') as f:
        f.write(json.dumps(record, sort_keys=True) + '\n')


def _progress(args, done, total):
    bad = sum(1 for r in done.values() if r.get('violations'))
    print('%s  %d/%d runs done, %d with violations' % (
        time.strftime('%H:%M:%S'), len(done), total, bad), flush=True)


def write_results(args, records, report):
    """The campaign's tables as ``benchmarks/results/campaign.md``."""
    elapsed = (datetime.datetime.now(datetime.timezone.utc) -
               report.started).total_seconds()
    report.note('Seed %d, p in %s, restart rate %s, source fault rate %s; '
                '%d of the %d runs asked for are in the JSON lines (workers: '
                '%d). This invocation took %.0f min; the runs in the '
                'file took %.0f min of run time, %.0f min of CPU.' % (
                    args.seed, args.p, args.restart_rate, args.source_rate,
                    len(records), args.runs, args.workers, elapsed / 60,
                    sum(r.get('seconds', 0) for r in records) / 60,
                    sum(r.get('cpu_seconds', 0) for r in records) / 60))
    for note in args.note or ():
        report.note(note)
    restarts = sum(1 for r in records if r.get('restart_done'))
    hangs = sum(1 for r in records if r.get('hang'))
    bad = [r['index'] for r in records if r.get('violations')]
    report.table('All runs', [
        'runs', 'p', 'violations', 'hangs', 'restart share', 'aborts',
        'warm-ups', 'source faults', 'copy samples'], [[
            len(records), ' and '.join(str(p) for p in args.p), len(bad),
            hangs, '%d (%.0f%%)' % (restarts,
                                    100.0 * restarts / max(len(records), 1)),
            sum(1 for r in records if r.get('action') == 'abort'),
            sum(1 for r in records if r.get('warm_up')),
            sum(1 for r in records if r.get('source_fault')),
            sum(r.get('samples', 0) for r in records)]],
        notes=['Runs with violations: %s' % bad] if bad else ())
    plain = _plain_outcomes(records)
    report.table('Destination faults only: success against 1 - p^N',
                 ['N', 'p', 'runs', 'succeeded', 'rate', '1 - p^N'],
                 [[n, p, runs, ok, '%.3f' % (ok / runs), '%.3f' % (1 - p ** n)]
                  for (n, p), (runs, ok) in sorted(plain.items())])
    moments = collections.Counter(
        (r['restart'], r.get('moment')) for r in records
        if r.get('restart_done'))
    report.table('Restarts done, by target and moment',
                 ['target', 'moment', 'runs'],
                 [[t, m, c] for (t, m), c in sorted(moments.items())])
    source = [r for r in records if r.get('source_fault')]
    report.note('Source-side (correlated) faults: %d runs, %d succeeded.' % (
        len(source), sum(1 for r in source if r.get('success'))))
    path = report.write(os.path.dirname(os.path.abspath(args.results)))[0]
    if os.path.abspath(path) != os.path.abspath(args.results):
        os.replace(path, args.results)


def _plain_outcomes(records):
    plain = collections.defaultdict(lambda: [0, 0])
    for record in records:
        if (record.get('restart') is None and record.get('action') != 'abort'
                and record.get('source_fault') is None and
                'success' in record):
            cell = plain[(record['n'], record['p'])]
            cell[0] += 1
            cell[1] += bool(record['success'])
    return plain


def summary(records):
    """The campaign's table, as text."""
    lines = []
    plain = _plain_outcomes(records)
    lines.append('Destination faults only (success when one chosen '
                 'destination had none):')
    lines.append('  %2s  %4s  %5s  %7s  %7s  %7s' % (
        'N', 'p', 'runs', 'success', 'rate', '1-p^N'))
    for (n, p), (runs, ok) in sorted(plain.items()):
        lines.append('  %2d  %4.2f  %5d  %7d  %7.3f  %7.3f' % (
            n, p, runs, ok, ok / runs, 1 - p ** n))
    source = [r for r in records if r.get('source_fault')]
    lines.append('Source-side (correlated) faults: %d runs, %d succeeded' % (
        len(source), sum(1 for r in source if r.get('success'))))
    restarts = collections.Counter(
        (r['restart'], r.get('moment')) for r in records
        if r.get('restart_done'))
    done = sum(restarts.values())
    lines.append('Restarts done: %d of %d runs (%.0f%%)' % (
        done, len(records), 100.0 * done / max(len(records), 1)))
    for (target, moment), count in sorted(restarts.items()):
        lines.append('  %-11s at %-17s %4d' % (target, moment, count))
    actions = collections.Counter(
        (r.get('action'), r.get('action_status')) for r in records
        if r.get('action'))
    for (action, status), count in sorted(actions.items(), key=str):
        lines.append('%s answered %s: %d' % (action, status, count))
    lines.append('Warm-up runs: %d' % sum(1 for r in records
                                          if r.get('warm_up')))
    samples = sum(r.get('samples', 0) for r in records)
    hangs = [r['index'] for r in records if r.get('hang')]
    bad = [r['index'] for r in records if r.get('violations')]
    lines.append('Copy samples: %d' % samples)
    lines.append('Hangs: %d %s' % (len(hangs), hangs or ''))
    lines.append('Runs with invariant violations: %d %s' % (
        len(bad), bad[:50] or ''))
    return '\n'.join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='tools/run campaign',
        description='Randomized multi-destination migrations with faults '
                    'and restarts on Nova\'s functional harness.')
    sub = parser.add_subparsers(dest='mode')
    worker = sub.add_parser('worker', help=argparse.SUPPRESS)
    for p in (parser, worker):
        p.add_argument('--seed', type=int, default=1,
                       help='Campaign seed; run I of seed S is always the '
                            'same scenario (default 1).')
        p.add_argument('--p', type=float, action='append',
                       help='Fault probability of each destination; '
                            'repeat for several (default 0.1 and 0.3).')
        p.add_argument('--restart-rate', type=float, default=0.3,
                       help='Share of runs with a restart (default 0.3).')
        p.add_argument('--source-rate', type=float, default=0.05,
                       help='Share of runs whose source fails (default '
                            '0.05).')
        p.add_argument('--out', default=None,
                       help='JSON lines file, resumed if it exists '
                            '(default campaign-SEED.jsonl).')
    parser.add_argument('--runs', type=int, default=100,
                        help='Number of runs (default 100).')
    parser.add_argument('--first', type=int, default=0,
                        help='Index of the first run (default 0).')
    parser.add_argument('--only', type=int, default=None,
                        help='Replay run ONLY of the seed alone.')
    parser.add_argument('--batch', type=int, default=20,
                        help='Runs per harness (default 20).')
    parser.add_argument('--workers', type=int, default=1,
                        help='Harnesses run at once (default 1).')
    parser.add_argument('--results', default=None,
                        help='Also write the tables, the command and the '
                             'load average as Markdown to this file '
                             '(e.g. benchmarks/results/campaign.md).')
    parser.add_argument('--note', action='append',
                        help='A paragraph for the Markdown results (repeat '
                             'for several).')
    worker.add_argument('--indices', required=True,
                        type=lambda text: [int(i) for i in text.split(',')])
    args = parser.parse_args(argv)
    args.argv = list(argv)
    args.p = args.p or list(DEFAULT_PS)
    if args.out is None:
        args.out = 'campaign-%d.jsonl' % args.seed
        if getattr(args, 'only', None) is not None:
            args.out = 'campaign-%d-run-%d.jsonl' % (args.seed, args.only)
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.mode == 'worker':
        return _worker_main(args)
    return _campaign_main(args)


if __name__ == '__main__':
    sys.exit(main())
