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

"""Bring the lab's cloud up, take it down, say how it is.

The first ``up`` bootstraps: databases, schemas, Keystone's users and
catalog, Nova's cells. The lab then keeps its state across ``down`` and
``up`` like a cloud that is powered off and on; ``down --purge`` (or a
change of the pinned versions) starts it afresh.
"""

import concurrent.futures
import datetime
import hashlib
import json
import os
import secrets as secrets_mod
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

from tools.lab import config
from tools.lab import layout as layout_mod
from tools.lab import libvirtd
from tools.lab import network
from tools.lab import processes
from tools.lab import storage

LabError = processes.LabError

DATABASES = ('keystone', 'glance', 'neutron', 'placement', 'nova_api',
             'nova_cell0', 'nova')
SCHEMA_OWNERS = ('keystone', 'glance', 'neutron', 'openstack-placement',
                 'nova')
# Bump when the bootstrap changes in a way an existing lab lacks.
BOOTSTRAP_VERSION = '2'
SERVICE_USERS = ('nova', 'glance', 'neutron', 'placement')
CATALOG = (('compute', 'nova', 'nova-api', '/v2.1'),
           ('image', 'glance', 'glance', ''),
           ('placement', 'placement', 'placement', ''),
           ('network', 'neutron', 'neutron', ''))
WSGI = (('keystone', 'keystone.wsgi.api:application'),
        ('placement', 'placement.wsgi.api:application'),
        ('glance', 'glance.wsgi.api:application'),
        ('neutron', 'neutron.wsgi.api:application'),
        ('nova-api', 'nova.wsgi.osapi_compute:application'))
CONTROLLER_SERVICES = ('nova-conductor', 'nova-scheduler',
                       'nova-multidest-conductor')
START_TIMEOUT = 180
DEMO_USER = 'demo'


class Cloud(object):

    def __init__(self, lab):
        self.lab = lab
        self.procs = processes.ProcessTable(lab.path('pids'),
                                            lab.path('logs'))
        self._secrets = None

    # -- state -----------------------------------------------------------

    @property
    def secrets(self):
        if self._secrets is None:
            path = self.lab.path('secrets.json')
            try:
                with open(path) as f:
                    self._secrets = json.load(f)
            except FileNotFoundError:
                self._secrets = {name: secrets_mod.token_hex(12) for name in
                                 ('db', 'rabbit', 'service', 'admin',
                                  'demo')}
                os.makedirs(self.lab.dir, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
                with os.fdopen(fd, 'w') as f:
                    json.dump(self._secrets, f)
        return self._secrets

    def _bootstrap_digest(self):
        """Changes with the pins of the services whose schemas it made."""
        digest = hashlib.sha1(BOOTSTRAP_VERSION.encode())
        with open(os.path.join(self.lab.top, 'upper-constraints.txt')) as f:
            for line in f:
                if line.split('==')[0].lower() in SCHEMA_OWNERS:
                    digest.update(line.encode())
        return digest.hexdigest()

    def bootstrapped(self):
        try:
            with open(self.lab.path('bootstrapped')) as f:
                return f.read().strip() == self._bootstrap_digest()
        except FileNotFoundError:
            return False

    def env(self, user='admin'):
        """OS_* variables of ``user`` (admin, or the non-admin demo)."""
        return {
            'OS_AUTH_URL': self.lab.auth_url,
            'OS_IDENTITY_API_VERSION': '3',
            'OS_USERNAME': user,
            'OS_PASSWORD': self.secrets[user],
            'OS_PROJECT_NAME': user,
            'OS_USER_DOMAIN_NAME': 'Default',
            'OS_PROJECT_DOMAIN_NAME': 'Default',
            'OS_REGION_NAME': 'RegionOne',
            'OS_INTERFACE': 'public',
        }

    # -- up ----------------------------------------------------------------

    def up(self, log=print):
        _preflight()
        started = time.monotonic()
        try:
            network.create(self.lab)
            self.write_configs()
            if not self.bootstrapped():
                log('Bootstrapping lab %s (first start, or new pins of its '
                    'services)' % self.lab.id)
                self._stop_processes()
                self._bootstrap(log)
            self._start_all(log)
        except BaseException:
            log('Lab %s did not come up; stopping what had started'
                % self.lab.id)
            self.down(log=lambda message: None)
            raise
        log('Lab %s up in %.0fs: %d compute hosts, controller at %s'
            % (self.lab.id, time.monotonic() - started, len(self.lab.hosts),
               self.lab.controller.address))

    def write_configs(self):
        """Write every service's configuration; the same at every call."""
        lab, secrets = self.lab, self.secrets
        self.conf = {
            'keystone': config.keystone(lab, secrets),
            'glance': config.glance(lab, secrets),
            'placement': config.placement(lab, secrets),
            'neutron': config.neutron(lab, secrets),
            'nova': config.nova(lab, secrets),
            'rabbitmq': config.rabbitmq(lab, secrets),
        }
        for host in lab.hosts:
            self.conf[host.name] = config.nova_compute(lab, host.name)
        for name in ('locks', 'tmp'):
            os.makedirs(lab.path(name), exist_ok=True)
        storage.prepare(lab)

    def _in_controller(self, argv):
        return ['ip', 'netns', 'exec', self.lab.controller.netns] + argv

    def _run(self, name, argv, env=None, timeout=600):
        """A one-shot command; its output goes to logs/NAME.log."""
        log_path = os.path.join(self.procs.log_dir, name + '.log')
        full_env = dict(os.environ)
        full_env.update(env or {})
        with open(log_path, 'ab') as log:
            log.write(('--- %s\n' % ' '.join(argv)).encode())
            log.flush()
            result = subprocess.run(argv, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    env=full_env, timeout=timeout)
        if result.returncode:
            raise LabError('%s failed (exit %d); see its log %s:\n%s' % (
                name, result.returncode, log_path,
                processes.log_tail(log_path)))

    def _nova_manage(self, name, *args):
        self._run(name, [self.lab.tool('nova-manage'), '--config-file',
                         self.conf['nova']] + list(args))

    # -- services ------------------------------------------------------

    def _start_mariadb(self):
        lab = self.lab
        datadir = lab.path('mysql')
        if not os.path.isdir(os.path.join(datadir, 'mysql')):
            os.makedirs(datadir, exist_ok=True)
            self._run('mariadb-install-db', [
                'mariadb-install-db', '--no-defaults', '--datadir=' + datadir,
                '--user=root', '--auth-root-authentication-method=socket',
                '--skip-test-db'])
        process = self.procs['mariadb']
        process.start(self._in_controller([
            'mariadbd', '--no-defaults', '--user=root',
            '--datadir=' + datadir, '--socket=' + self._mysql_socket,
            '--pid-file=' + lab.path('mysql.pid'),
            '--bind-address=' + lab.controller.address,
            '--port=%d' % layout_mod.PORTS['mariadb'],
            '--tmpdir=' + lab.path('tmp'), '--skip-log-bin',
            '--skip-name-resolve', '--max-connections=1000',
            '--innodb-buffer-pool-size=128M',
            '--innodb-flush-log-at-trx-commit=0', '--innodb-doublewrite=0',
            '--character-set-server=utf8mb4']))
        return process, self._mysql_ready

    @property
    def _mysql_socket(self):
        return self.lab.path('mysql.sock')

    def _mysql(self, sql):
        result = subprocess.run(
            ['mariadb', '--no-defaults', '--socket=' + self._mysql_socket,
             '-u', 'root', '--batch', '--skip-column-names', '-e', sql],
            capture_output=True, text=True, timeout=60)
        if result.returncode:
            raise LabError('SQL failed: %s' % result.stderr.strip())
        return result.stdout

    def _mysql_ready(self):
        return os.path.exists(self._mysql_socket) and \
            self._mysql('SELECT 1') is not None

    def _start_epmd(self):
        process = self.procs['epmd']
        port = layout_mod.PORTS['epmd']
        process.start(self._in_controller(['epmd', '-port', str(port)]))
        return process, lambda: _port_open(self.lab.controller.address,
                                           port)

    def start_rabbitmq(self):
        process = self.procs['rabbitmq']
        process.start(self._in_controller(
            ['/usr/lib/rabbitmq/bin/rabbitmq-server']),
            env=self.conf['rabbitmq'])
        return process, self._rabbit_ready

    def _rabbit_ready(self):
        import amqp
        connection = amqp.Connection(
            '%s:%d' % (self.lab.controller.address,
                       layout_mod.PORTS['rabbitmq']),
            userid='lab', password=self.secrets['rabbit'],
            connect_timeout=2)
        try:
            connection.connect()
        finally:
            connection.collect()
        return True

    def rabbitmqctl(self, *args):
        """Output of the lab broker's rabbitmqctl, run on the controller."""
        return subprocess.run(
            self._in_controller(['/usr/lib/rabbitmq/bin/rabbitmqctl', '-q'] +
                                list(args)),
            env=dict(os.environ, **self.conf['rabbitmq']),
            capture_output=True, text=True, check=True, timeout=60).stdout

    def consumed_queues(self):
        """Names of the services' queues that have a consumer.

        Reply and fanout queues are left out: their names change when a
        service connects again. After a broker restart, a service takes
        its requests again once its topic queues are back in this set.
        """
        names = set()
        for line in self.rabbitmqctl('list_queues', '--no-table-headers',
                                     'name', 'consumers').splitlines():
            fields = line.split()
            if (len(fields) == 2 and fields[1].isdigit() and
                    int(fields[1]) > 0 and
                    not fields[0].startswith('reply_') and
                    '_fanout_' not in fields[0]):
                names.add(fields[0])
        return names

    def _start_wsgi(self, name, app):
        directory = config.gunicorn(self.lab, name, app,
                                    layout_mod.PORTS[name])
        env = {
            'OS_KEYSTONE_CONFIG_FILES': self.conf['keystone'],
            'OS_GLANCE_CONFIG_DIR': self.conf['glance'],
            'OS_PLACEMENT_CONFIG_DIR': self.conf['placement'],
            'OS_NEUTRON_CONFIG_DIR': self.conf['neutron'],
            'OS_NEUTRON_CONFIG_FILES': 'neutron.conf;ml2_conf.ini',
            'OS_NOVA_CONFIG_DIR': os.path.dirname(self.conf['nova']),
            'OS_NOVA_CONFIG_FILES': 'api-paste.ini;nova.conf',
        }
        process = self.procs[name]
        process.start(self._in_controller([self.lab.tool('gunicorn')]),
                      env=env, cwd=directory)
        url = self.lab.url(name)
        if name == 'neutron':
            return process, self._neutron_ready
        return process, lambda: _http_answers(url)

    def _neutron_ready(self):
        """Neutron answers an authenticated query.

        Neutron 29's API worker fails every GET /v2.0/ports with
        AttributeError ('Port' has no attribute 'port_forwardings') until
        some query has configured SQLAlchemy's mappers; a list of
        networks does that.
        """
        response = self._admin().get(
            '/v2.0/networks', endpoint_filter={'service_type': 'network'},
            raise_exc=False)
        return response.status_code == 200

    def start_controller_service(self, name):
        process = self.procs[name]
        since = _utcnow_seconds()
        process.start(self._in_controller([
            self.lab.tool(name), '--config-file', self.conf['nova']]))
        return process, lambda: self._service_up(name, 'controller', since)

    def _start_holder(self, host):
        """A process that holds the host's namespaces open.

        libvirtd and nova-compute join its network, mount and UTS
        namespaces, so that either can be killed and started again alone.
        """
        node = self.lab.host(host.name)
        directory = self.lab.libvirt_dir(host.name)
        process = self.procs['%s-namespaces' % host.name]
        process.start(['ip', 'netns', 'exec', node.netns] +
                      libvirtd.namespace_command(
                          directory, ['sleep', 'infinity'],
                          hostname=host.name))
        return process, lambda: _exe_name(process.pid) == 'sleep'

    def _in_host(self, host, argv):
        holder = self.procs['%s-namespaces' % host].pid
        return ['nsenter', '--target', str(holder), '--mount', '--uts',
                '--net'] + argv

    def _start_shared_storage(self):
        process = self.procs['shared-storage']
        process.start(self._in_controller(
            storage.server_command(self.lab, process.log_path)))
        return process, lambda: _port_open(self.lab.controller.address,
                                           storage.PORT)

    def _mount_instances(self, host):
        """The host's mount of the shared instances_path."""
        process = self.procs['%s-instances' % host]
        process.start(self._in_host(
            host, storage.client_command(self.lab, process.log_path)))
        holder = self.procs['%s-namespaces' % host].pid
        return process, lambda: storage.mounted(
            holder, storage.mount_point(self.lab))

    def instances_storage(self, host):
        """storage.LOCAL or storage.SHARED: the host's instances_path."""
        holder = self.procs['%s-namespaces' % host]
        if not holder.alive():
            raise LabError('%s is not up' % host)
        return storage.kind(holder.pid, storage.mount_point(self.lab))

    def set_instances_storage(self, host, kind):
        """Give ``host`` its own instances_path (LOCAL) or the shared one.

        Only while the host runs no domain at all: a guest's files would
        vanish from under it. nova-compute and libvirtd see the change at
        once; the shared volume stays mounted underneath.
        """
        if kind not in (storage.LOCAL, storage.SHARED):
            raise ValueError('storage must be %s or %s, not %r'
                             % (storage.LOCAL, storage.SHARED, kind))
        if self.instances_storage(host) == kind:
            return
        domains = self._domain_names(host)
        if domains:
            raise LabError(
                'cannot switch the instances_path of %s to %s storage while '
                'it has domains (%s): delete its servers first'
                % (host, kind, ', '.join(sorted(domains))))
        if kind == storage.LOCAL:
            os.makedirs(storage.local_directory(self.lab, host),
                        exist_ok=True)
            argv = storage.local_command(self.lab, host)
        else:
            argv = storage.shared_command(self.lab)
        self._run('%s-instances-storage' % host, self._in_host(host, argv),
                  timeout=60)
        if self.instances_storage(host) != kind:
            raise LabError('the instances_path of %s is still not %s'
                           % (host, kind))

    def _domain_names(self, host):
        import libvirt
        libvirt.registerErrorHandler(lambda context, error: None, None)
        connection = libvirt.open(libvirtd.uri(self.lab.libvirt_dir(host)))
        try:
            return {domain.name() for domain in connection.listAllDomains(0)}
        finally:
            connection.close()

    def start_libvirtd(self, host):
        directory = self.lab.libvirt_dir(host)
        process = self.procs['%s-libvirtd' % host]
        process.start(self._in_host(
            host, libvirtd.daemon_command(directory, listen=True)))
        return process, lambda: self._libvirt_answers(host)

    def _libvirt_answers(self, host):
        import libvirt
        libvirt.registerErrorHandler(lambda context, error: None, None)
        connection = libvirt.open(libvirtd.uri(self.lab.libvirt_dir(host)))
        connection.close()
        return True

    def start_compute(self, host):
        """Start (or restart) the host's nova-compute."""
        process = self.procs['%s-nova-compute' % host]
        since = _utcnow_seconds()
        process.start(self._in_host(host, [
            self.lab.tool('nova-compute'), '--config-file',
            self.conf['nova'], '--config-file', self.conf[host]]))
        return process, lambda: self._service_up('nova-compute', host,
                                                 since)

    # -- readiness through the APIs, as an operator sees it ---------------

    def session(self, user='admin'):
        from keystoneauth1.identity import v3
        from keystoneauth1 import session as ks_session
        env = self.env(user)
        return ks_session.Session(auth=v3.Password(
            auth_url=env['OS_AUTH_URL'], username=user,
            password=env['OS_PASSWORD'], project_name=user,
            user_domain_name='Default', project_domain_name='Default'))

    def _service_up(self, binary, host, since):
        """Up, by a heartbeat of the process started at ``since``.

        A service restarted within Nova's service_down_time still shows
        the heartbeat of the process it replaced: "up" alone would call it
        ready before it consumes its queue.
        """
        response = self._admin().get(
            '/os-services', endpoint_filter={'service_type': 'compute'},
            params={'binary': binary, 'host': host}, raise_exc=False)
        if response.status_code != 200:
            return False
        return any(service['state'] == 'up' and service['updated_at'] and
                   datetime.datetime.fromisoformat(
                       service['updated_at']) > since
                   for service in response.json()['services'])

    def _admin(self):
        if getattr(self, '_admin_session', None) is None:
            self._admin_session = self.session('admin')
        return self._admin_session

    # -- bootstrap ---------------------------------------------------------

    def _wipe(self):
        for name in ('mysql', 'rabbitmq', 'keystone', 'glance', 'instances',
                     'shared-storage', 'nova', 'neutron', 'hosts',
                     'bootstrapped'):
            path = self.lab.path(name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.unlink(path)
        self.write_configs()

    def _bootstrap(self, log):
        self._wipe()
        self._wait([self._start_mariadb()])
        self._mysql(' '.join(
            'CREATE DATABASE IF NOT EXISTS %s;' % name for name in DATABASES) +
            "CREATE USER IF NOT EXISTS 'lab'@'%%' IDENTIFIED BY '%s';"
            "GRANT ALL PRIVILEGES ON *.* TO 'lab'@'%%';" % self.secrets['db'])
        log('Creating database schemas')
        tool = self.lab.tool
        syncs = [
            ('keystone-manage', [tool('keystone-manage'), '--config-file',
                                 self.conf['keystone'], 'db_sync']),
            ('glance-manage', [tool('glance-manage'), '--config-file',
                               os.path.join(self.conf['glance'],
                                            'glance-api.conf'), 'db_sync']),
            ('neutron-db-manage', [
                tool('neutron-db-manage'), '--config-file',
                os.path.join(self.conf['neutron'], 'neutron.conf'),
                '--config-file',
                os.path.join(self.conf['neutron'], 'ml2_conf.ini'),
                'upgrade', 'heads']),
            ('placement-manage', [tool('placement-manage'), '--config-file',
                                  os.path.join(self.conf['placement'],
                                               'placement.conf'),
                                  'db', 'sync']),
        ]
        with concurrent.futures.ThreadPoolExecutor(len(syncs) + 1) as pool:
            futures = [pool.submit(self._run, name, argv)
                       for name, argv in syncs]
            futures.append(pool.submit(self._nova_cells))
            for future in futures:
                future.result()
        for step in ('fernet_setup', 'credential_setup'):
            self._run('keystone-manage', [
                tool('keystone-manage'), '--config-file',
                self.conf['keystone'], step, '--keystone-user', 'root',
                '--keystone-group', 'root'])
        self._run('keystone-manage', [
            tool('keystone-manage'), '--config-file', self.conf['keystone'],
            'bootstrap', '--bootstrap-password', self.secrets['admin'],
            '--bootstrap-region-id', 'RegionOne',
            '--bootstrap-admin-url', self.lab.auth_url,
            '--bootstrap-public-url', self.lab.auth_url,
            '--bootstrap-internal-url', self.lab.auth_url])
        self._wait([self._start_wsgi('keystone', WSGI[0][1])])
        self._keystone_catalog()
        with open(self.lab.path('bootstrapped'), 'w') as f:
            f.write(self._bootstrap_digest())

    def _nova_cells(self):
        self._nova_manage('nova-manage', 'api_db', 'sync')
        self._nova_manage('nova-manage', 'cell_v2', 'map_cell0',
                          '--database_connection',
                          config.db_url(self.lab, self.secrets, 'nova_cell0'))
        self._nova_manage('nova-manage', 'cell_v2', 'create_cell',
                          '--name', 'cell1')
        self._nova_manage('nova-manage', 'db', 'sync')

    def _keystone_catalog(self):
        from keystoneclient.v3 import client
        keystone = client.Client(session=self.session('admin'))
        roles = {role.name: role for role in keystone.roles.list()}
        for name in ('service', 'member'):
            if name not in roles:
                roles[name] = keystone.roles.create(name)
        service_project = keystone.projects.create('service', 'default')
        for user in SERVICE_USERS:
            created = keystone.users.create(
                user, domain='default', password=self.secrets['service'],
                default_project=service_project)
            for role in ('admin', 'service'):
                keystone.roles.grant(roles[role], user=created,
                                     project=service_project)
        demo_project = keystone.projects.create(DEMO_USER, 'default')
        demo = keystone.users.create(
            DEMO_USER, domain='default', password=self.secrets['demo'],
            default_project=demo_project)
        keystone.roles.grant(roles['member'], user=demo,
                             project=demo_project)
        for service_type, name, port_name, path in CATALOG:
            service = keystone.services.create(name, type=service_type)
            for interface in ('public', 'internal'):
                keystone.endpoints.create(
                    service, self.lab.url(port_name, path),
                    interface=interface, region='RegionOne')

    # -- start -------------------------------------------------------------

    def _wait(self, pending, timeout=START_TIMEOUT):
        """Wait for (process, ready) pairs at once; raise the first error."""
        if not pending:
            return
        with concurrent.futures.ThreadPoolExecutor(len(pending)) as pool:
            futures = [pool.submit(process.wait_ready, ready, timeout)
                       for process, ready in pending]
            errors = []
            for future in futures:
                try:
                    future.result()
                except LabError as exc:
                    errors.append(str(exc))
        if errors:
            raise LabError('\n\n'.join(errors))

    def _start_all(self, log):
        procs = self.procs
        check_ports_free(self.lab.controller.address, {
            name: port for name, port in dict(
                layout_mod.PORTS, **{'shared-storage': storage.PORT}).items()
            if not procs[name].alive()})
        first = []
        if not procs['mariadb'].alive():
            first.append(self._start_mariadb())
        if not procs['epmd'].alive():
            first.append(self._start_epmd())
        if not procs['shared-storage'].alive():
            first.append(self._start_shared_storage())
        if first:
            self._wait(first)
        pending = []
        if not procs['rabbitmq'].alive():
            pending.append(self.start_rabbitmq())
        for name, app in WSGI:
            if not procs[name].alive():
                pending.append(self._start_wsgi(name, app))
        holders = [self._start_holder(host) for host in self.lab.hosts
                   if not procs['%s-namespaces' % host.name].alive()]
        self._wait(holders)
        self._wait([self._mount_instances(host.name)
                    for host in self.lab.hosts
                    if not procs['%s-instances' % host.name].alive()])
        for host in self.lab.hosts:
            if not procs['%s-libvirtd' % host.name].alive():
                pending.append(self.start_libvirtd(host.name))
        log('Starting services')
        self._wait(pending)
        pending = [self.start_controller_service(name)
                   for name in CONTROLLER_SERVICES
                   if not procs[name].alive()]
        pending += [self.start_compute(host.name) for host in self.lab.hosts
                    if not procs['%s-nova-compute' % host.name].alive()]
        self._wait(pending)
        self._nova_manage('nova-manage', 'cell_v2', 'discover_hosts')
        from tools.lab import resources
        resources.ensure(self)

    # -- down and status -------------------------------------------------

    def down(self, purge=False, log=print):
        """Stop every process the lab started; remove its network."""
        self._stop_processes()
        self._kill_leftovers(log)
        network.remove(self.lab)
        if purge and os.path.isdir(self.lab.dir):
            shutil.rmtree(self.lab.dir)
            # A later up() of this object starts afresh, as a new one would.
            self.procs = processes.ProcessTable(self.lab.path('pids'),
                                                self.lab.path('logs'))
            self._secrets = None
        log('Lab %s is down%s' % (
            self.lab.id, ' and its state removed' if purge else ''))

    def _kill_leftovers(self, log):
        """SIGKILL what still runs in the lab's namespaces, by PID.

        The recorded processes are stopped by then; what is left was
        started by one of them and outlived it (a QEMU whose libvirtd died
        or lost its PID file, a helper of a killed service).
        """
        leftovers = network.processes_in(self.lab)
        if not leftovers:
            return
        log('Killing %d process(es) left in lab %s\'s namespaces: %s' % (
            len(leftovers), self.lab.id, ', '.join(
                '%d (%s in %s)' % (pid, _exe_name(pid), netns)
                for pid, netns in sorted(leftovers.items()))))
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            processes.wait_until(lambda: not network.processes_in(self.lab),
                                 processes.STOP_TIMEOUT,
                                 'processes of lab %s ended' % self.lab.id)
        except LabError:
            raise LabError('processes %s of lab %s survived SIGKILL' % (
                sorted(network.processes_in(self.lab)), self.lab.id))
        self.procs.reap()

    def _stop_processes(self):
        """Stop in stages, each stage's processes at once.

        The services first, then what they use (messaging, each host's
        daemons and mount), then the storage and database under it all.
        """
        procs = self.procs
        services = ['%s-nova-compute' % host.name for host in self.lab.hosts]
        services += list(CONTROLLER_SERVICES) + [name for name, _ in WSGI]
        _each([procs[name].stop for name in services])
        _each([procs['rabbitmq'].stop, procs['epmd'].stop] + [
            (lambda host=host.name: self._stop_host_daemons(host))
            for host in self.lab.hosts])
        procs['shared-storage'].stop()
        procs['mariadb'].stop()
        for name in procs.names():
            procs[name].stop()

    def _stop_host_daemons(self, host):
        directory = self.lab.libvirt_dir(host)
        qemus = libvirtd.qemu_pids(directory)
        daemon = self.procs['%s-libvirtd' % host]
        if daemon.alive():
            try:
                import libvirt
                libvirt.registerErrorHandler(lambda c, e: None, None)
                connection = libvirt.open(libvirtd.uri(directory))
                for domain in connection.listAllDomains(0):
                    try:
                        domain.destroy()
                    except libvirt.libvirtError:
                        pass
                connection.close()
            except Exception:
                pass
        daemon.stop()
        for pid in qemus:
            if _exe_name(pid).startswith('qemu-system'):
                os.kill(pid, signal.SIGKILL)
        self.procs['%s-instances' % host].stop()
        self.procs['%s-namespaces' % host].stop()

    def status(self):
        """{process name: running?} of every process the lab knows."""
        names = ['mariadb', 'epmd', 'rabbitmq', 'shared-storage']
        names += [n for n, _ in WSGI]
        names += list(CONTROLLER_SERVICES)
        for host in self.lab.hosts:
            names += ['%s-%s' % (host.name, kind)
                      for kind in ('namespaces', 'instances', 'libvirtd',
                                   'nova-compute')]
        return {name: self.procs[name].alive() for name in names}


def _each(calls):
    """Run ``calls`` at once; raise the first error once all ended."""
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        for future in [pool.submit(call) for call in calls]:
            future.result()


def _preflight():
    if os.geteuid() != 0:
        raise LabError('the lab needs root: it creates network namespaces, '
                       'a bridge and mounts')
    missing = [tool for tool in ('ip', 'nsenter', 'unshare', 'mariadbd',
                                 'epmd', 'libvirtd', 'qemu-system-x86_64',
                                 'glusterfsd', 'glusterfs')
               if shutil.which(tool) is None]
    if not os.path.exists('/usr/lib/rabbitmq/bin/rabbitmq-server'):
        missing.append('rabbitmq-server')
    if not os.path.exists('/dev/fuse'):
        missing.append('/dev/fuse (the FUSE module, for the shared '
                       'instances_path)')
    if missing:
        raise LabError('missing %s: run the lab through tools/run, which '
                       'installs the "lab" profile of bindep.txt'
                       % ', '.join(missing))
    accels = subprocess.run(['qemu-system-x86_64', '-accel', 'help'],
                            capture_output=True, text=True).stdout
    if 'tcg' not in accels and 'kvm' not in accels:
        raise LabError('QEMU offers neither KVM nor TCG here: %s' % accels)


def check_ports_free(address, ports):
    """Refuse to start services whose port something else already holds.

    ``ports`` maps each service about to start to its port. Such a service
    would die at start (or, worse, the holder would pass for it), so the
    lab names both and starts nothing.
    """
    taken = ['%s (port %d)' % (name, port)
             for name, port in sorted(ports.items())
             if _port_open(address, port)]
    if taken:
        raise LabError(
            'cannot start %s: another process already listens on %s at '
            'that port; stop it (a lab started from another copy of this '
            'checkout?), or run "tools/run lab down" if it is a leftover '
            'of this lab' % (', '.join(taken), address))


def _exe_name(pid):
    try:
        with open('/proc/%d/comm' % pid) as f:
            return f.read().strip()
    except (OSError, TypeError):
        return ''


def _port_open(address, port):
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((address, port)) == 0


def _http_answers(url):
    try:
        urllib.request.urlopen(url, timeout=5).close()
    except urllib.error.HTTPError:
        pass
    return True


def _utcnow_seconds():
    """Now in UTC, naive and whole seconds, as Nova's updated_at."""
    return datetime.datetime.now(datetime.timezone.utc).replace(
        tzinfo=None, microsecond=0)
