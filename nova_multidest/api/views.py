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

"""Response bodies of the multi-destination live migration action."""

from nova_multidest import vocabulary


def accepted(server_url, instance, args, request_id):
    """The 202 body: what was asked for and where to follow it.

    One Migration per destination appears under ``migrations`` as the
    conductor prepares it; the instance action named by ``request_id``
    records the outcome and any failure.
    """
    return {vocabulary.RESPONSE_KEY: {
        'server_uuid': instance.uuid,
        'destinations': args['destinations'],
        'count': (len(args['destinations']) if args['destinations']
                  else args['count']),
        'block_migration': args['block_migration'],
        'warm_up': args['warm_up'],
        'request_id': request_id,
        'links': [
            {'rel': 'migrations', 'href': server_url + '/migrations'},
            {'rel': 'action',
             'href': '%s/os-instance-actions/%s' % (server_url, request_id)},
        ],
    }}
