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

"""Options of the ``[multidest]`` group, declared once for every service.

nova-api, nova-multidest-conductor and nova-compute all read the same
nova.conf, so one module holds every option and ``list_opts`` feeds
oslo-config-generator.
"""

from oslo_config import cfg

from nova_multidest import vocabulary

multidest_group = cfg.OptGroup(
    vocabulary.NAMESPACE,
    title='Multi-destination live migration',
    help='Options of nova-multidest: live migration of one server to '
         'several destination hosts at once, where the first destination '
         'that comes up ACTIVE wins and every other one is reverted.')

destination_opts = [
    cfg.IntOpt(
        'default_destinations',
        default=2, min=1, max=vocabulary.MAX_DESTINATIONS,
        help='Number of destinations the scheduler picks when a request '
             'names neither destination hosts nor a count, and the flavor '
             'has no "multidest:destinations" extra spec.'),
    cfg.IntOpt(
        'max_destinations',
        default=4, min=1, max=vocabulary.MAX_DESTINATIONS,
        help='Largest number of destinations one migration may use. Each '
             'destination holds a placement claim and receives a full copy '
             'of the guest memory until a winner is elected, so this bounds '
             'the resources one request can hold.'),
    cfg.IntOpt(
        'min_destinations',
        default=1, min=1, max=vocabulary.MAX_DESTINATIONS,
        help='Fewest prepared destinations with which a migration starts '
             'streaming. Destinations that fail their checks or preparation '
             'are reverted alone; if fewer than this remain, the migration '
             'is abandoned and the server stays ACTIVE on its source.'),
    cfg.StrOpt(
        'spread',
        default='none',
        choices=[
            ('none', 'No constraint beyond distinct hosts.'),
            ('availability_zone', 'Each destination in a different '
                                  'availability zone where possible.'),
            ('aggregate', 'Each destination in a different host aggregate '
                          'where possible.'),
        ],
        help='Failure domain over which scheduled destinations are spread.'),
    cfg.IntOpt(
        'max_rounds',
        default=1, min=1, max=5,
        help='Rounds to try when every destination of a round fails. Each '
             'further round asks the scheduler for hosts not yet tried; the '
             'server keeps running on its source in between. QEMU 7.2 '
             'under TCG can leave guest writes out of a migration started '
             'after a failed one (see README, "Known issue"): keep 1 on '
             'such hosts.'),
]

stream_opts = [
    cfg.StrOpt(
        'topology',
        default=vocabulary.Topology.CHAIN,
        choices=[
            (vocabulary.Topology.STAR,
             'The source host sends one copy of the stream to each '
             'destination: N copies on the source link, so a migration '
             'bound by that link takes about N times as long as to one '
             'destination.'),
            (vocabulary.Topology.CHAIN,
             'Each destination host forwards the stream to the next: one '
             'copy on every link, so about the time of a migration to one '
             'destination plus a little latency per hop.'),
        ],
        help='How the migration stream reaches the destinations. chain is '
             'the default because a migration network is the bottleneck '
             'of a live migration, and a star puts N copies on the source '
             'host\'s link; star suits a source whose link is much faster '
             'than the destinations\' or N=1.'),
    cfg.IntOpt(
        'lag_limit_mb',
        default=256, min=1,
        help='A destination whose backlog exceeds that of the fastest '
             'destination by more than this many MiB is dropped, so that a '
             'slow host neither stalls the others nor exhausts relay '
             'memory.'),
    cfg.IntOpt(
        'max_bandwidth_mb',
        min=0,
        help='Migration bandwidth limit in MiB/s given to the hypervisor '
             'for the whole stream of a multi-destination migration; 0 '
             'means unlimited. Unset (the default), [libvirt] '
             'live_migration_bandwidth applies, as for Nova\'s own live '
             'migrations; set, this option wins. With the star topology '
             'the source host sends N copies of a stream capped at this '
             'rate, which is why it may differ from Nova\'s.'),
    cfg.IntOpt(
        'downtime_limit_ms',
        min=1, max=60000,
        help='Longest pause of the guest, in milliseconds, that the '
             'switch-over may cause: a fixed downtime-limit given to QEMU '
             'and used by the "downtime" warm-up exit condition. Unset '
             '(the default), Nova\'s [libvirt] live_migration_downtime '
             'applies, raised in live_migration_downtime_steps steps every '
             'live_migration_downtime_delay seconds per GiB as Nova does '
             '(a warm-up migration uses live_migration_downtime itself); '
             'set, this fixed limit wins.'),
    cfg.HostAddressOpt(
        'listen_address',
        help='Address on which each compute host accepts migration streams '
             'from other hosts. Defaults to the address Nova uses for '
             'live migration on that host (live_migration_inbound_addr, '
             'else my_ip).'),
    cfg.PortOpt(
        'port_min',
        default=49300,
        help='Lowest TCP port a destination host listens on for streams. '
             'Open the range port_min..port_max between computes.'),
    cfg.PortOpt(
        'port_max',
        default=49399,
        help='Highest TCP port a destination host listens on for streams.'),
    cfg.BoolOpt(
        'tls',
        help='Encrypt streams between hosts with TLS. The per-migration '
             'secret authenticates every hop either way; TLS also keeps '
             'guest memory confidential on the wire. Unset (the default), '
             'Nova\'s [libvirt] live_migration_with_native_tls decides; '
             'set, this option wins.'),
    cfg.StrOpt(
        'tls_cert_file',
        help='PEM certificate this host presents on stream connections. '
             'Unset, the certificate of QEMU\'s native TLS, '
             'server-cert.pem in QEMU\'s x509 directory (/etc/pki/qemu, '
             'which Nova\'s live_migration_with_native_tls uses too).'),
    cfg.StrOpt(
        'tls_key_file',
        help='PEM private key of tls_cert_file. Unset, server-key.pem in '
             'QEMU\'s x509 directory.'),
    cfg.StrOpt(
        'tls_ca_file',
        help='PEM bundle of the certificate authorities that signed the '
             'other compute hosts\' certificates. Unset, ca-cert.pem in '
             'QEMU\'s x509 directory.'),
]

warm_up_opts = [
    cfg.StrOpt(
        'warm_up_exit',
        default=vocabulary.WarmUpExit.COPIED,
        choices=[
            (vocabulary.WarmUpExit.COPIED,
             'Every page has been sent at least once.'),
            (vocabulary.WarmUpExit.DOWNTIME,
             'The expected downtime, from the remaining dirty memory and '
             'the dirty rate, is below downtime_limit_ms.'),
        ],
        help='Condition a destination must reach before a warm-up '
             'migration is ready to switch over.'),
    cfg.IntOpt(
        'warm_up_percent',
        default=100, min=1, max=100,
        help='Percentage of live destinations that must meet warm_up_exit '
             'before a warm-up migration is reported ready.'),
    cfg.IntOpt(
        'switch_over_timeout',
        default=10, min=1,
        help='Seconds a requested switch-over (force complete) may take: '
             'to wait for warm_up_exit, then to converge within '
             'downtime_limit_ms. After that the switch-over is forced: the '
             'guest pauses until the rest of its memory is copied, however '
             'long that takes. A second force complete forces it at once.'),
]

timeout_opts = [
    cfg.IntOpt(
        'prepare_timeout',
        default=300, min=1,
        help='Seconds a destination may take for its checks, claims, port '
             'binding, volume attachments and paused incoming domain before '
             'it is reverted.'),
    cfg.IntOpt(
        'completion_timeout',
        min=0,
        help='Seconds from the start of streaming within which a '
             'multi-destination migration must complete; 0 for no limit. '
             'When it is exceeded, [libvirt] live_migration_timeout_action '
             'applies: abort (every destination is reverted, the server '
             'runs on its source) or force_complete (the switch-over is '
             'forced). A warm-up migration waits for force complete within '
             'this time too. Unset (the default), Nova\'s [libvirt] '
             'live_migration_completion_timeout applies, in seconds per '
             'GiB of guest memory (and of copied local disks) as Nova '
             'computes it; set, this option wins.'),
    cfg.IntOpt(
        'election_timeout',
        default=60, min=1,
        help='Seconds after the source paused within which some destination '
             'must report the complete state; else the source resumes.'),
    cfg.IntOpt(
        'accept_timeout',
        default=300, min=10,
        help='Seconds a request accepted by nova-api may wait for '
             'nova-multidest-conductor to start it (the cast was lost, or '
             'no conductor runs). A running conductor then rolls it back: '
             'task_state cleared, the instance action ended with an error '
             'and the reason in the server fault. A conductor refuses a '
             'request older than half of this.'),
]

service_opts = [
    cfg.StrOpt(
        'conductor_topic',
        default='nova-multidest-conductor',
        help='oslo.messaging topic served by nova-multidest-conductor.'),
    cfg.StrOpt(
        'compute_topic',
        default='nova-multidest-compute',
        help='oslo.messaging topic served by each compute host running '
             'MultiDestLibvirtDriver.'),
    cfg.IntOpt(
        'status_probe_timeout',
        default=10, min=1,
        help='Seconds nova-multidest-status upgrade check waits for each '
             'compute host to answer on compute_topic; a host that does '
             'not answer in time is reported as not running '
             'MultiDestLibvirtDriver.'),
    cfg.StrOpt(
        'hypervisor',
        default='libvirt',
        help='Name of the hypervisor extension, from the '
             'nova_multidest.hypervisors entry point namespace, that the '
             'compute driver drives.'),
]

ALL_OPTS = (destination_opts + stream_opts + warm_up_opts + timeout_opts +
            service_opts)


def register_opts(conf):
    conf.register_group(multidest_group)
    conf.register_opts(ALL_OPTS, group=multidest_group)


def list_opts():
    return [(multidest_group, ALL_OPTS)]


CONF = cfg.CONF
register_opts(CONF)
