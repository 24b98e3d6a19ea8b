"""Response bodies of the multi-destination live migration action."""

RESPONSE_KEY = 'multidest_migration'


def accepted(req, prefix, instance, args, request_id):
    """The 202 body: what was asked for and where to follow it.

    One Migration per destination appears under ``migrations`` as the
    conductor prepares it; the instance action named by ``request_id``
    records the outcome and any failure.
    """
    server_url = '%s%s/servers/%s' % (req.application_url, prefix,
                                      instance.uuid)
    return {RESPONSE_KEY: {
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
