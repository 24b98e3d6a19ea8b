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

"""The one module that uses Nova's private functional test harness.

Nova's functional harness (``nova.tests.functional``) is not a public API:
it changes between releases, so the test constraints pin nova 34.0.0 and
every other test module reaches the harness only through the classes
here. ``MultiDestTestBase`` runs Nova's real API, conductor, scheduler and
placement with Neutron and Cinder fixtures, and K compute services whose
driver is ``MultiDestLibvirtDriver`` over Nova's fake libvirt.
``assert_invariants`` is the checker every test ends with: it proves the
server runs on exactly one host and nothing of it is left anywhere else.
"""

import contextlib
import json
import os
import re
import sys
import threading
import time
import urllib.parse

import fixtures
from oslo_messaging.rpc import dispatcher as oslo_dispatcher
from oslo_utils import uuidutils

from nova.compute import vm_states
from nova import conf as nova_conf
from nova import context as nova_context
from nova import objects
from nova.objects import fields
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.tests.functional import integrated_helpers
from nova.tests.functional.libvirt import base as libvirt_base
from nova import thread_pool_factory
from nova.virt.libvirt import migration as libvirt_migration

from nova_multidest import conf as multidest_conf
from nova_multidest import vocabulary
from tests.functional import database

CONF = nova_conf.CONF

DRIVER = 'multidest.MultiDestLibvirtDriver'
CONDUCTOR_MANAGER = (
    'nova_multidest.conductor.manager.MultiDestConductorManager')


def nova_api_paste_config():
    """Nova's own api-paste.ini, as the nova wheel installs it."""
    return os.path.join(sys.prefix, 'etc', 'nova', 'api-paste.ini')


def multidest_api_paste_config():
    """Our sample api-paste.ini: Nova's plus the multidest filter."""
    return os.path.abspath(os.path.join(
        os.path.dirname(__file__), os.pardir, os.pardir, 'etc',
        'api-paste.ini'))


def wait_until(predicate, timeout=60.0, interval=0.05, message=None):
    """Poll ``predicate`` until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(message or 'timed out waiting for %s' %
                                 predicate)
        time.sleep(interval)


class _HostLocalConf(object):
    """Nova's CONF, with ``instances_path`` as the calling host sees it."""

    def __init__(self, conf, storage):
        self._conf = conf
        self._storage = storage

    @property
    def instances_path(self):
        return self._storage.instances_path()

    def __getattr__(self, name):
        return getattr(self._conf, name)


class HostLocalStorage(fixtures.Fixture):
    """Each compute its own instances_path, as hosts without shared storage.

    Every compute of the harness runs in this process with one CONF, so
    one instances_path is what shared storage would be. With this fixture
    Nova's libvirt driver and utils read ``instances_path`` as
    ``<root>/hosts/<host>`` for the host whose work the calling thread
    does: the host of the RPC endpoint (Nova's compute manager or ours)
    that dispatched the call, carried over to the threads it spawns.
    Paths a source's domain XML names are this host's own in the
    destination's XML, as the same path names each host's own file on
    real hosts.
    """

    def __init__(self, root):
        super().__init__()
        self.root = root
        self._local = threading.local()

    def _setUp(self):
        conf = _HostLocalConf(CONF, self)
        for module in ('nova.virt.libvirt.utils', 'nova.virt.libvirt.driver'):
            self.useFixture(fixtures.MonkeyPatch(module + '.CONF', conf))
        dispatch = oslo_dispatcher.RPCDispatcher._do_dispatch
        storage = self

        def do_dispatch(dispatcher, endpoint, method, ctxt, args):
            with storage.working_for(getattr(endpoint, 'host', None)):
                return dispatch(dispatcher, endpoint, method, ctxt, args)
        self.useFixture(fixtures.MonkeyPatch(
            'oslo_messaging.rpc.dispatcher.RPCDispatcher._do_dispatch',
            do_dispatch))
        spawn_on = thread_pool_factory.spawn_on

        def spawn_on_for_host(executor_type, func, *args, **kwargs):
            host = storage.current_host()

            def run(*args, **kwargs):
                with storage.working_for(host):
                    return func(*args, **kwargs)
            return spawn_on(executor_type, run, *args, **kwargs)
        self.useFixture(fixtures.MonkeyPatch(
            'nova.thread_pool_factory.spawn_on', spawn_on_for_host))
        updated_xml = libvirt_migration.get_updated_guest_xml

        def get_updated_guest_xml(*args, **kwargs):
            return storage.localize(updated_xml(*args, **kwargs))
        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.libvirt.migration.get_updated_guest_xml',
            get_updated_guest_xml))

    @contextlib.contextmanager
    def working_for(self, host):
        """The calling thread works for ``host`` (if not None) meanwhile."""
        previous = self.current_host()
        if host is not None:
            self._local.host = host
        try:
            yield
        finally:
            self._local.host = previous

    def current_host(self):
        return getattr(self._local, 'host', None)

    def host_path(self, host):
        return os.path.join(self.root, 'hosts', host)

    def instances_path(self):
        host = self.current_host()
        if host is None:
            raise AssertionError(
                'instances_path read outside of any compute host\'s work')
        path = self.host_path(host)
        os.makedirs(path, exist_ok=True)
        return path

    def localize(self, xml):
        """``xml`` with every host's instances_path made this host's."""
        pattern = re.escape(os.path.join(self.root, 'hosts', '')) + r'[^/]+/'
        return re.sub(pattern, os.path.join(self.instances_path(), ''), xml)

    def instance_dir(self, host, server_id):
        return os.path.join(self.host_path(host), server_id)


class MultiDestTestBase(libvirt_base.ServersTestBase,
                        integrated_helpers.InstanceHelperMixin):
    """Nova with ``COMPUTES`` libvirt computes running our driver.

    Subclasses set ``COMPUTES`` and may override ``api_paste_config`` to
    run nova-api with another paste pipeline (ours adds a filter).
    """

    ADMIN_API = True
    microversion = '2.74'
    # Multi-destination migrations run for a while in the background; the
    # tests watch them through the API like an operator would.
    CAST_AS_CALL = False
    COMPUTES = 3
    HOSTNAME_FORMAT = 'compute%d'

    def api_paste_config(self):
        return nova_api_paste_config()

    def setUp(self):
        self.flags(api_paste_config=self.api_paste_config(), group='wsgi')
        # Nova's harness detaches each manager's graceful shutdown (timeout
        # 0); our compute driver's cleanup_host also stops its own RPC
        # server, which takes a moment, and would then shut the process-wide
        # executors down after the harness stopped guarding them, breaking
        # every later test of the worker. Let stop() wait for it instead.
        self.flags(manager_shutdown_timeout=10)
        multidest_conf.register_opts(CONF)
        # Nova's StandardLogging captures logs only while the test runs;
        # the thread pools Nova's harness shuts down after it (at the
        # test's clean-up) log through the process-wide handler of
        # nova.test, straight to the output. Capture those too: a test's
        # logs are shown with it when it fails, never otherwise.
        self.useFixture(fixtures.FakeLogger(
            format='%(asctime)s %(levelname)s [%(name)s] %(message)s'))
        # Nova's DatabaseWriteLock serializes writers, yet a writer's
        # first write may still find SQLite's write lock taken by a
        # reader (see the module).
        self.useFixture(database.ImmediateWriterTransactions())
        super().setUp()
        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.Domain.migrateToURI3',
            self._fake_libvirt_migration))
        self.multidest_conductor = None
        self.local_storage = None
        self._nova_notification_source = (
            fields.NotificationSource.get_source_by_binary)
        self.useFixture(fixtures.MonkeyPatch(
            'nova.objects.fields.NotificationSource.get_source_by_binary',
            self._notification_source))
        self.hostnames = [
            self.start_compute(hostname=self.HOSTNAME_FORMAT % (i + 1))
            for i in range(self.COMPUTES)]

    def _setup_compute_service(self):
        self.flags(compute_driver=DRIVER)

    # -- services ---------------------------------------------------------

    def _notification_source(self, binary):
        # Nova's notification publisher knows only Nova's own binaries; the
        # harness deletes services at clean-up, which notifies.
        if binary == vocabulary.CONDUCTOR_BINARY:
            return 'nova-conductor'
        return self._nova_notification_source(binary)

    def start_multidest_conductor(self):
        """Run nova-multidest-conductor in-process.

        It runs as its console script would, on the harness's message bus
        and databases.
        """
        service = self.start_service(
            'multidest-conductor', host=None,
            binary=vocabulary.CONDUCTOR_BINARY, manager=CONDUCTOR_MANAGER,
            topic=CONF.multidest.conductor_topic)
        self.multidest_conductor = service
        return service

    def restart_multidest_conductor(self):
        """Stop the conductor mid-operation and start a fresh one.

        The new one must recover every interrupted group from Nova's
        records alone.
        """
        if self.multidest_conductor is not None:
            self.multidest_conductor.stop()
        return self.start_multidest_conductor()

    def use_local_storage(self):
        """From now on each compute has its own, non-shared instances_path.

        Call it once the computes run and before the first server boots.
        """
        self.local_storage = self.useFixture(
            HostLocalStorage(CONF.instances_path))
        return self.local_storage

    def compute_driver(self, hostname):
        return self.computes[hostname].driver

    def fake_connection(self, hostname):
        return self.compute_driver(hostname)._host.get_connection()

    def admin_context(self):
        return nova_context.get_admin_context()

    # -- Nova's ordinary single-destination live migration -------------------

    def _fake_libvirt_migration(self, domain, dconnuri, params, flags):
        """Replay a finished libvirt migration on the fake connections.

        Nova's fake libvirt fails every migrateToURI3; this one does what
        libvirt does on success: the domain runs on the host named in the
        URI, and the source domain stops and, as Nova asks with
        VIR_MIGRATE_UNDEFINE_SOURCE, is undefined; then the source job
        completes, which is what Nova's driver waits for.
        """
        dest_host = urllib.parse.urlparse(dconnuri).hostname
        self.fake_connection(dest_host).createXML(
            params['destination_xml'], 0)
        domain.destroy()
        # A transient domain (one a multi-destination migration left
        # running) is gone once destroyed.
        still_defined = domain.name() in domain._connection._vms
        if flags & fakelibvirt.VIR_MIGRATE_UNDEFINE_SOURCE and still_defined:
            domain.undefine()
        domain.complete_job()

    # -- invariants -------------------------------------------------------

    def get_migrations(self, server_id):
        return objects.MigrationList.get_by_filters(
            self.cell_context(), {'instance_uuid': server_id})

    def get_instance(self, server_id):
        return objects.Instance.get_by_uuid(
            self.cell_context(), server_id,
            expected_attrs=['system_metadata', 'migration_context'])

    def cell_context(self):
        """An admin context targeted at the cell the computes are in."""
        ctxt = self.admin_context()
        nova_context.set_target_cell(ctxt, self.cell_mappings['cell1'])
        return ctxt

    def assert_invariants(self, server, expected_host):
        """Prove the server runs on ``expected_host`` and nowhere else.

        Checks Nova's records and every fixture that stands in for a real
        service: server ACTIVE with no task; no Migration of it still in
        progress; placement allocations of the instance only on the
        expected host and none held by its migrations; port bindings only
        on the expected host, active there; one volume attachment per
        volume, connected to the expected host; the guest's domain on the
        expected host's fake libvirt only, running.
        """
        server_id = server['id']
        server = self.admin_api.get_server(server_id)
        self.assertEqual('ACTIVE', server['status'], server)
        self.assertIsNone(server['OS-EXT-STS:task_state'], server)
        self.assertEqual(expected_host, server['OS-EXT-SRV-ATTR:host'])

        instance = self.get_instance(server_id)
        self.assertEqual(vm_states.ACTIVE, instance.vm_state)
        self.assertEqual(expected_host, instance.host)
        self.assertEqual(expected_host, instance.node)
        self.assertIsNone(instance.migration_context)

        migrations = self.get_migrations(server_id)
        self.assert_no_migration_in_progress(migrations)
        self.assert_allocations_only_on(server_id, migrations, expected_host)
        self.assert_port_bindings_only_on(server_id, expected_host)
        self.assert_volume_attachments_only_on(server_id, expected_host)
        self.assert_domain_only_on(server_id, expected_host)
        self.assert_instance_dir_single(server_id, expected_host)
        self.assert_no_group_in_progress(instance)
        return server

    def assert_no_migration_in_progress(self, migrations):
        for migration in migrations:
            self.assertIn(
                migration.status, vocabulary.MigrationStatus.NOVA_FINAL,
                'Migration %s to %s still %s' % (
                    migration.uuid, migration.dest_compute,
                    migration.status))

    def assert_allocations_only_on(self, server_id, migrations, host):
        rp_uuid = self.compute_rp_uuids[host]
        allocations = self.placement.get(
            '/allocations/%s' % server_id).body['allocations']
        self.assertEqual([rp_uuid], list(allocations),
                         'instance allocations: %s' % allocations)
        for migration in migrations:
            held = self.placement.get(
                '/allocations/%s' % migration.uuid).body['allocations']
            self.assertEqual({}, held, 'migration %s to %s still holds %s' % (
                migration.uuid, migration.dest_compute, held))
        consumers = {server_id} | {m.uuid for m in migrations}
        for other, other_rp in self.compute_rp_uuids.items():
            if other == host:
                continue
            on_other = self.placement.get(
                '/resource_providers/%s/allocations' % other_rp
            ).body['allocations']
            self.assertFalse(
                consumers & set(on_other),
                'allocations left on %s: %s' % (other, on_other))

    def server_ports(self, server_id):
        return [port for port in self.neutron._ports.values()
                if port.get('device_id') == server_id]

    def assert_port_bindings_only_on(self, server_id, host):
        for port in self.server_ports(server_id):
            self.assertEqual(host, port['binding:host_id'], port)
            bindings = self.neutron._port_bindings.get(port['id'], {})
            if not bindings:
                continue
            self.assertEqual([host], list(bindings),
                             'port %s bindings: %s' % (port['id'], bindings))
            self.assertEqual('ACTIVE', bindings[host]['status'])

    def assert_volume_attachments_only_on(self, server_id, host):
        """One attachment per volume: the one the BDM uses.

        The connector's host cannot be checked here: os-brick's fixture
        reports the process-wide CONF.host, whichever compute asks.
        """
        bdms = objects.BlockDeviceMappingList.get_by_instance_uuid(
            self.cell_context(), server_id)
        expected = {bdm.volume_id: bdm.attachment_id
                    for bdm in bdms if bdm.is_volume}
        found = {}
        for volume_id, attachments in self.cinder.volume_to_attachment.items():
            for attachment in attachments.values():
                if attachment['instance_uuid'] != server_id:
                    continue
                self.assertNotIn(volume_id, found,
                                 'volume %s has several attachments: %s' % (
                                     volume_id, attachments))
                found[volume_id] = attachment['id']
        self.assertEqual(expected, found)

    def assert_domain_only_on(self, server_id, host):
        for hostname in self.computes:
            domains = [dom for dom in
                       self.fake_connection(hostname)._vms.values()
                       if dom.UUIDString() == server_id]
            if hostname == host:
                self.assertEqual(1, len(domains),
                                 'domains on %s: %s' % (host, domains))
                self.assertEqual(fakelibvirt.VIR_DOMAIN_RUNNING,
                                 domains[0].info()[0])
            else:
                self.assertEqual([], domains,
                                 'domain left on %s' % hostname)

    def assert_instance_dir_single(self, server_id, host=None):
        """No directory of the instance but its own.

        The harness shares one instances_path between all computes (as
        shared storage would), so a leaked per-destination directory shows
        as any entry of the instance other than its own directory.
        """
        if self.local_storage is not None:
            return self.assert_instance_dir_only_on(server_id, host)
        entries = [name for name in os.listdir(CONF.instances_path)
                   if name.startswith(server_id)]
        self.assertIn(entries, ([], [server_id]))

    def assert_instance_dir_only_on(self, server_id, host):
        """With local storage: no directory of the instance but on ``host``.

        Nova's harness writes no disk at spawn, so the host's own may be
        missing too.
        """
        for hostname in self.computes:
            path = self.local_storage.host_path(hostname)
            entries = [name for name in (os.listdir(path) if
                                         os.path.isdir(path) else [])
                       if name.startswith(server_id)]
            if hostname == host:
                self.assertIn(entries, ([], [server_id]))
            else:
                self.assertEqual([], entries,
                                 'instance files left on %s' % hostname)

    def assert_no_group_in_progress(self, instance):
        group_keys = [key for key in instance.system_metadata
                      if key.startswith(vocabulary.SYSMETA_PREFIX) and
                      key != vocabulary.SYSMETA_LAST_RESULT]
        self.assertEqual([], group_keys, instance.system_metadata)

    # -- small helpers ------------------------------------------------------

    def boot_server(self, host=None, networks='none', **kwargs):
        return self._create_server(host=host, networks=networks, **kwargs)

    def new_uuid(self):
        return uuidutils.generate_uuid()


class MultiDestMigrationTestBase(MultiDestTestBase):
    """Our whole control plane: API filter, conductor, compute endpoints.

    Computes drive the fake hypervisor extension, which simulates the
    stream and takes injected faults per host and phase.
    """

    COMPUTES = 4

    def api_paste_config(self):
        return multidest_api_paste_config()

    def setUp(self):
        self.flags(hypervisor='fake', group='multidest')
        # Imported here: the fake extension is a compute-side module.
        from nova_multidest.virt.hypervisors import fake
        self.fake_hypervisor = fake
        fake.reset()
        self.addCleanup(fake.reset)
        super().setUp()
        self.start_multidest_conductor()

    def inject_fault(self, host, phase):
        self.fake_hypervisor.inject_fault(host, phase)

    def request_migration(self, server, status=202, **args):
        return self.admin_api.api_post(
            '/servers/%s/action' % server['id'],
            {vocabulary.SERVER_ACTION: args}, check_response_status=[status])

    def group_ended(self, server_id):
        instance = self.get_instance(server_id)
        if any(key.startswith(vocabulary.SYSMETA_PREFIX) and
               key != vocabulary.SYSMETA_LAST_RESULT
               for key in instance.system_metadata):
            return None
        if instance.task_state is not None:
            return None
        return instance

    def wait_for_group_end(self, server, timeout=60.0):
        """Wait until the conductor ended the group; return its result."""
        instance = wait_until(
            lambda: self.group_ended(server['id']), timeout=timeout,
            message='group of %s did not end' % server['id'])
        return json.loads(
            instance.system_metadata.get(vocabulary.SYSMETA_LAST_RESULT,
                                         '{}'))

    def migrate_and_wait(self, server, **args):
        self.request_migration(server, **args)
        return self.wait_for_group_end(server)

    def cast_to_conductor(self, server, **args):
        """What nova-api does once it accepted a request, without its checks.

        For what the conductor must handle although nova-api refuses it
        today: a host that went down after nova-api checked it, another
        RPC caller's arguments, records written by older releases.
        Returns the request id of the instance action.
        """
        from nova.compute import task_states
        from nova_multidest.conductor import rpcapi as conductor_rpcapi
        ctxt = self.cell_context()
        instance = self.get_instance(server['id'])
        instance.task_state = task_states.MIGRATING
        instance.save(expected_task_state=[None])
        objects.InstanceAction.action_start(
            ctxt, instance.uuid, 'live-migration', want_result=False)
        conductor_rpcapi.ConductorAPI().live_migrate_multi(
            ctxt, instance, destinations=args.get('destinations'),
            count=args.get('count'), block_migration='auto', warm_up=False)
        return ctxt.request_id

    def get_instance_faults(self, server_id):
        return objects.InstanceFaultList.get_by_instance_uuids(
            self.cell_context(), [server_id])

    def migrations_by_host(self, server_id):
        return {m.dest_compute: m for m in self.get_migrations(server_id)}

    def hold_compute_calls(self, method, host=None, limit=None):
        """Hold our compute RPC ``method`` (to ``host``) until released.

        Returns a CallGate: ``reached`` is set when a held call arrived;
        ``release()`` lets held calls through, ``lose()`` makes them fail
        as calls of a conductor that died would never return.
        """
        from nova_multidest.compute import rpcapi as compute_rpcapi
        return self.useFixture(CallGate(compute_rpcapi.ComputeAPI, method,
                                        host=host, limit=limit))


def destination_of_call(args, kwargs):
    """The host a call of our compute RPC client goes to.

    Its methods take (self, context, instance, [migration, ...]):
    destination-side calls go to ``migration.dest_compute``, the others
    to ``instance.host``.
    """
    migration = kwargs.get('migration')
    if migration is None and len(args) > 3:
        migration = args[3]
    host = getattr(migration, 'dest_compute', None)
    if host is None:
        instance = kwargs.get('instance', args[2] if len(args) > 2 else None)
        host = getattr(instance, 'host', None)
    return host


class CallGate(fixtures.Fixture):
    """Holds calls of ``owner.method`` in flight, for an exact order.

    Only calls to ``host`` (as ``host_of(args, kwargs)`` tells, by default
    the destination of a call of our compute RPC client) are held, at most
    ``limit`` of them; ``held_hosts`` names the hosts of the held calls.
    Used as a fixture, it patches the method while in use and lets every
    held call go at clean-up.
    """

    def __init__(self, owner, method, host=None, limit=None,
                 host_of=destination_of_call):
        super().__init__()
        self.owner = owner
        self.method = method
        self.host = host
        self.limit = limit
        self.host_of = host_of
        self.reached = threading.Event()
        self._released = threading.Event()
        self._lost = False
        self._lock = threading.Lock()
        self.count = 0
        self.held_hosts = []

    def _setUp(self):
        real = getattr(self.owner, self.method)

        def held(*args, **kwargs):
            self.hold(*args, **kwargs)
            return real(*args, **kwargs)

        self.useFixture(fixtures.MockPatchObject(self.owner, self.method,
                                                 held))
        self.addCleanup(self.release)

    def hold(self, *args, **kwargs):
        host = self.host_of(args, kwargs) if self.host_of else None
        with self._lock:
            if self._released.is_set():
                return
            if self.host is not None and host != self.host:
                return
            if self.limit is not None and self.count >= self.limit:
                return
            self.count += 1
            self.held_hosts.append(host)
        self.reached.set()
        self._released.wait(120)
        if self._lost:
            raise RuntimeError('%s call lost with the service that made '
                               'it' % self.method)

    def wait_reached(self, count=1, timeout=60):
        wait_until(lambda: self.count >= count, timeout=timeout,
                   message='held calls never arrived')

    def release(self):
        self._released.set()

    def lose(self):
        self._lost = True
        self._released.set()
