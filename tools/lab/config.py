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

"""The configuration files of the lab's services.

Written at every ``up`` from the lab's layout and secrets, so that a
change here takes effect at the next start without a new bootstrap.
"""

import configparser
import os
import textwrap
import uuid

from tools.lab import layout as layout_mod
from tools.lab import libvirtd
from tools.lab import storage

# One migration bandwidth for Nova's own live migration and ours, as a
# migration network would impose: it keeps a warm-up migration's stream in
# flight (pre-copy cannot converge within the warm-up's 1 ms downtime
# limit while the guest dirties memory), so that the lab's tests inject
# their faults mid-stream, and it puts both kinds of migration on equal
# terms for the lab benchmark.
MIGRATION_BANDWIDTH_MB = 16

MULTIDEST_FILTER = ('[filter:multidest]\n'
                    'paste.filter_factory = '
                    'nova_multidest.api.filter:filter_factory\n')


def write_ini(path, sections):
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    for section, options in sections.items():
        parser[section] = {key: str(value) for key, value in options.items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        parser.write(f)


def db_url(lab, secrets, name):
    return 'mysql+pymysql://lab:%s@%s:%d/%s?charset=utf8' % (
        secrets['db'], lab.controller.address,
        layout_mod.PORTS['mariadb'], name)


def transport_url(lab, secrets):
    return 'rabbit://lab:%s@%s:%d/' % (
        secrets['rabbit'], lab.controller.address,
        layout_mod.PORTS['rabbitmq'])


def service_auth(lab, secrets, user):
    """Keystone credentials of a service user, for any auth section."""
    return {'auth_type': 'password', 'auth_url': lab.auth_url,
            'username': user, 'password': secrets['service'],
            'project_name': 'service', 'user_domain_name': 'Default',
            'project_domain_name': 'Default', 'region_name': 'RegionOne'}


def authtoken(lab, secrets, user):
    options = service_auth(lab, secrets, user)
    options['www_authenticate_uri'] = lab.url('keystone')
    options['service_token_roles_required'] = 'true'
    return options


def gunicorn(lab, name, app, port, threads=4):
    """gunicorn.conf.py of one WSGI service.

    The services are started with no arguments, from this directory:
    Keystone and Neutron parse the process's command line with
    oslo.config, which would reject gunicorn's options.
    """
    directory = lab.path('services', name)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, 'gunicorn.conf.py'), 'w') as f:
        f.write(textwrap.dedent('''\
            wsgi_app = %r
            bind = %r
            workers = 1
            worker_class = 'gthread'
            threads = %d
            timeout = 300
            graceful_timeout = 5
            ''') % (app, '%s:%d' % (lab.controller.address, port), threads))
    return directory


def keystone(lab, secrets):
    path = lab.path('etc', 'keystone', 'keystone.conf')
    keys = lab.path('keystone')
    write_ini(path, {
        'DEFAULT': {},
        'database': {'connection': db_url(lab, secrets, 'keystone')},
        'token': {'provider': 'fernet'},
        'fernet_tokens': {'key_repository': os.path.join(keys, 'fernet')},
        'fernet_receipts': {'key_repository': os.path.join(keys, 'fernet')},
        'credential': {'key_repository': os.path.join(keys, 'credential')},
    })
    return path


def glance(lab, secrets):
    directory = lab.path('etc', 'glance')
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(lab.bin, '..', 'etc', 'glance',
                           'glance-api-paste.ini')) as f:
        paste = f.read()
    with open(os.path.join(directory, 'glance-api-paste.ini'), 'w') as f:
        f.write(paste)
    store = lab.path('glance')
    write_ini(os.path.join(directory, 'glance-api.conf'), {
        'DEFAULT': {'enabled_backends': 'fs:file'},
        'glance_store': {'default_backend': 'fs'},
        'fs': {'filesystem_store_datadir': os.path.join(store, 'images')},
        'os_glance_staging_store': {
            'filesystem_store_datadir': os.path.join(store, 'staging')},
        'os_glance_tasks_store': {
            'filesystem_store_datadir': os.path.join(store, 'tasks')},
        'database': {'connection': db_url(lab, secrets, 'glance')},
        'keystone_authtoken': authtoken(lab, secrets, 'glance'),
        'paste_deploy': {'flavor': 'keystone'},
        'oslo_concurrency': {'lock_path': lab.path('locks', 'glance')},
    })
    return directory


def placement(lab, secrets):
    directory = lab.path('etc', 'placement')
    write_ini(os.path.join(directory, 'placement.conf'), {
        'placement_database': {
            'connection': db_url(lab, secrets, 'placement')},
        'api': {'auth_strategy': 'keystone'},
        'keystone_authtoken': authtoken(lab, secrets, 'placement'),
    })
    return directory


def neutron(lab, secrets):
    directory = lab.path('etc', 'neutron')
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(lab.bin, '..', 'etc', 'neutron',
                           'api-paste.ini')) as f:
        paste = f.read()
    with open(os.path.join(directory, 'api-paste.ini'), 'w') as f:
        f.write(paste)
    write_ini(os.path.join(directory, 'neutron.conf'), {
        'DEFAULT': {
            'core_plugin': 'ml2',
            # get_ports needs the port forwarding model loaded.
            'service_plugins': 'router,port_forwarding',
            'auth_strategy': 'keystone',
            'transport_url': transport_url(lab, secrets),
            'api_paste_config': os.path.join(directory, 'api-paste.ini'),
            'state_path': lab.path('neutron'),
            'notify_nova_on_port_status_changes': 'false',
            'notify_nova_on_port_data_changes': 'false',
        },
        'database': {'connection': db_url(lab, secrets, 'neutron')},
        'keystone_authtoken': authtoken(lab, secrets, 'neutron'),
        'nova': service_auth(lab, secrets, 'nova'),
        'oslo_concurrency': {'lock_path': lab.path('locks', 'neutron')},
    })
    write_ini(os.path.join(directory, 'ml2_conf.ini'), {
        'ml2': {'type_drivers': 'flat', 'tenant_network_types': '',
                'mechanism_drivers': '', 'extension_drivers': ''},
    })
    return directory


def nova_api_paste(lab):
    """Nova's own api-paste.ini with README's installation step 3."""
    with open(os.path.join(lab.bin, '..', 'etc', 'nova',
                           'api-paste.ini')) as f:
        paste = f.read()
    lines = paste.splitlines()
    section = None
    for index, line in enumerate(lines):
        if line.startswith('['):
            section = line.strip()
        elif (section == '[composite:openstack_compute_api_v21]' and
                line.startswith('keystone =')):
            lines[index] = line.replace('keystonecontext ',
                                        'keystonecontext multidest ')
    path = lab.path('etc', 'nova', 'api-paste.ini')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n\n' + MULTIDEST_FILTER)
    return path


def nova(lab, secrets):
    """nova.conf shared by every Nova service of the lab."""
    path = lab.path('etc', 'nova', 'nova.conf')
    write_ini(path, {
        'DEFAULT': {
            'transport_url': transport_url(lab, secrets),
            'my_ip': lab.controller.address,
            'host': layout_mod.CONTROLLER,
            'state_path': lab.path('nova', 'controller'),
            'instances_path': storage.mount_point(lab),
            'compute_driver': 'multidest.MultiDestLibvirtDriver',
            'debug': 'false',
        },
        'api': {'auth_strategy': 'keystone'},
        'wsgi': {'api_paste_config': nova_api_paste(lab)},
        'api_database': {'connection': db_url(lab, secrets, 'nova_api')},
        'database': {'connection': db_url(lab, secrets, 'nova')},
        'keystone_authtoken': authtoken(lab, secrets, 'nova'),
        'placement': service_auth(lab, secrets, 'placement'),
        'neutron': service_auth(lab, secrets, 'neutron'),
        'glance': {'region_name': 'RegionOne'},
        'service_user': dict(service_auth(lab, secrets, 'nova'),
                             send_service_user_token='true'),
        'conductor': {'workers': 1},
        'scheduler': {'workers': 1},
        'oslo_concurrency': {'lock_path': lab.path('locks', 'controller')},
        'oslo_messaging_notifications': {'driver': 'noop'},
        'notifications': {'notification_format': 'unversioned'},
        'vnc': {'enabled': 'false'},
        'image_cache': {'manager_interval': -1},
        'libvirt': {
            'virt_type': 'qemu',
            # TCG has no host CPU to model.
            'cpu_mode': 'custom', 'cpu_models': 'qemu64',
            'live_migration_scheme': 'tcp',
            'live_migration_bandwidth': MIGRATION_BANDWIDTH_MB,
        },
        'multidest': {'hypervisor': 'libvirt',
                      'max_bandwidth_mb': MIGRATION_BANDWIDTH_MB},
    })
    return path


def nova_compute(lab, host):
    """What differs between the lab's compute hosts."""
    node = lab.host(host)
    path = os.path.join(lab.host_dir(host), 'nova-compute.conf')
    helper = '%s --config-file %s --config-file %s' % (
        lab.tool('privsep-helper'), lab.path('etc', 'nova', 'nova.conf'),
        path)
    write_ini(path, {
        'DEFAULT': {
            'host': host, 'my_ip': node.address,
            'state_path': os.path.join(lab.host_dir(host), 'state'),
        },
        'libvirt': {'live_migration_inbound_addr': node.address},
        'oslo_concurrency': {
            'lock_path': os.path.join(lab.host_dir(host), 'locks')},
        'nova_sys_admin': {'helper_command': helper},
        'privsep_osbrick': {'helper_command': helper},
    })
    for name in ('state', 'locks'):
        os.makedirs(os.path.join(lab.host_dir(host), name), exist_ok=True)
    libvirtd.prepare(lab.libvirt_dir(host), listen_address=node.address,
                     host_uuid=uuid.uuid5(uuid.NAMESPACE_DNS,
                                          '%s.%s.lab' % (host, lab.id)))
    return path


def rabbitmq(lab, secrets):
    directory = lab.path('rabbitmq')
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, 'rabbitmq.conf'), 'w') as f:
        f.write(textwrap.dedent('''\
            listeners.tcp.default = %s:%d
            default_user = lab
            default_pass = %s
            loopback_users = none
            log.console = true
            log.file = false
            disk_free_limit.absolute = 50MB
            ''') % (lab.controller.address, layout_mod.PORTS['rabbitmq'],
                    secrets['rabbit']))
    with open(os.path.join(directory, 'enabled_plugins'), 'w') as f:
        f.write('[].\n')
    return {
        'HOME': directory,
        'RABBITMQ_NODENAME': 'rabbit@localhost',
        'RABBITMQ_USE_LONGNAME': 'false',
        'RABBITMQ_CONFIG_FILE': os.path.join(directory, 'rabbitmq.conf'),
        'RABBITMQ_ADVANCED_CONFIG_FILE': os.path.join(directory,
                                                      'advanced.config'),
        'RABBITMQ_CONF_ENV_FILE': os.path.join(directory, 'rabbitmq-env.conf'),
        'RABBITMQ_ENABLED_PLUGINS_FILE': os.path.join(directory,
                                                      'enabled_plugins'),
        'RABBITMQ_MNESIA_BASE': os.path.join(directory, 'mnesia'),
        'RABBITMQ_LOG_BASE': lab.path('logs'),
        'RABBITMQ_LOGS': '-',
        'RABBITMQ_PID_FILE': os.path.join(directory, 'rabbitmq.pid'),
        'RABBITMQ_DIST_PORT': '25672',
    }
