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

"""Versioned notifications of multi-destination live migrations.

Operators' monitoring and billing listen to Nova's versioned
notifications; a group emits its own, by Nova's conventions: the payload
is an oslo.versionedobjects object (``nova_object.name``, ``.version``,
``.namespace`` and ``.data`` on the wire), the event type
``multidest.live_migration.<action>`` (vocabulary.NotificationEvent), and
it goes out through Nova's versioned notifier, so Nova's
``[notifications]`` options (``notification_format``,
``versioned_notifications_topics``) and transport apply unchanged. Nova's
own NotificationPublisher accepts only Nova's binaries, so the publisher
is ``nova-multidest-conductor:<host>``, built here. Payloads bump their
version on every change, as Nova's do; doc/source/admin/notifications.rst
has a sample of each, checked against what is emitted.

Notifying never fails the migration: an error is logged and dropped.
"""

import functools

from oslo_log import log as logging
from oslo_versionedobjects import base as ovo_base
from oslo_versionedobjects import fields

from nova import rpc

from nova_multidest import conf
from nova_multidest import vocabulary

LOG = logging.getLogger(__name__)
CONF = conf.CONF
NAMESPACE = 'nova_multidest'


class NotificationObjectRegistry(ovo_base.VersionedObjectRegistry):
    """Our payloads only: Nova's registry is Nova's."""


class _Payload(ovo_base.VersionedObject, ovo_base.ComparableVersionedObject):
    # Nova's notification wire format: nova_object.name, .data, ...
    OBJ_SERIAL_NAMESPACE = 'nova_object'
    OBJ_PROJECT_NAMESPACE = NAMESPACE

    def to_notification(self):
        """The payload as listeners get it (no change tracking)."""
        self.obj_reset_changes(recursive=True)
        return self.obj_to_primitive()


@NotificationObjectRegistry.register
class MultiDestPayload(_Payload):
    """The group: which server, from where, in which round."""

    VERSION = '1.0'
    fields = {
        'instance_uuid': fields.UUIDField(),
        'source_host': fields.StringField(nullable=True),
        'round': fields.IntegerField(nullable=True),
        'request_id': fields.StringField(nullable=True),
    }


@NotificationObjectRegistry.register
class MultiDestStartPayload(MultiDestPayload):
    """start: the destinations asked for (None: the scheduler picks)."""

    VERSION = '1.0'
    fields = dict(MultiDestPayload.fields, **{
        'requested_destinations': fields.ListOfStringsField(nullable=True),
    })


@NotificationObjectRegistry.register
class MultiDestDestinationPayload(MultiDestPayload):
    """destination: one destination's outcome and, for a loser, why."""

    VERSION = '1.0'
    fields = dict(MultiDestPayload.fields, **{
        'host': fields.StringField(),
        'migration_uuid': fields.UUIDField(),
        'outcome': fields.StringField(),
        'reason': fields.StringField(nullable=True),
    })


@NotificationObjectRegistry.register
class MultiDestResultPayload(MultiDestPayload):
    """elected, end, error: where the server runs, and every reason."""

    VERSION = '1.0'
    fields = dict(MultiDestPayload.fields, **{
        'host': fields.StringField(nullable=True),
        'migration_uuid': fields.UUIDField(nullable=True),
        'reasons': fields.DictOfStringsField(),
    })


@NotificationObjectRegistry.register
class MultiDestRecoveryPayload(MultiDestPayload):
    """recovery: a group brought to its end from Nova's records."""

    VERSION = '1.0'
    fields = dict(MultiDestPayload.fields, **{
        'action': fields.StringField(),
        'reason': fields.StringField(nullable=True),
    })


def _never_fails(notify):
    @functools.wraps(notify)
    def wrapper(context, group, *args, **kwargs):
        try:
            notify(context, group, *args, **kwargs)
        except Exception:
            LOG.exception('Could not notify %s', notify.__name__,
                          instance=group.instance)
    return wrapper


@rpc.if_notifications_enabled
def _emit(context, event_type, payload, priority='info'):
    notifier = rpc.get_versioned_notifier(
        '%s:%s' % (vocabulary.CONDUCTOR_BINARY, CONF.host))
    getattr(notifier, priority)(context, event_type=event_type,
                                payload=payload.to_notification())


def _round(group):
    """This process's round, else the records' (a settled group).

    Kept on the group once read: the records lose it when the group ends.
    """
    if group.round_number is None:
        recorded = group.instance.system_metadata.get(
            vocabulary.SYSMETA_ROUND)
        group.round_number = int(recorded) if recorded else None
    return group.round_number


def _group(payload_class, context, group, **values):
    return payload_class(
        instance_uuid=group.instance.uuid, source_host=group.source,
        round=_round(group),
        request_id=getattr(context, 'request_id', None), **values)


@_never_fails
def start(context, group, requested_destinations=None):
    _emit(context, vocabulary.NotificationEvent.START, _group(
        MultiDestStartPayload, context, group,
        requested_destinations=requested_destinations))


@_never_fails
def destination(context, group, destination, outcome, reason=None):
    _emit(context, vocabulary.NotificationEvent.DESTINATION, _group(
        MultiDestDestinationPayload, context, group, host=destination.host,
        migration_uuid=destination.migration.uuid, outcome=outcome,
        reason=reason))


@_never_fails
def elected(context, group, destination):
    _emit(context, vocabulary.NotificationEvent.ELECTED, _group(
        MultiDestResultPayload, context, group, host=destination.host,
        migration_uuid=destination.migration.uuid, reasons={}))


@_never_fails
def end(context, group, destination):
    _emit(context, vocabulary.NotificationEvent.END, _group(
        MultiDestResultPayload, context, group, host=destination.host,
        migration_uuid=destination.migration.uuid,
        reasons=dict(group.reasons)))


@_never_fails
def error(context, group):
    _emit(context, vocabulary.NotificationEvent.ERROR, _group(
        MultiDestResultPayload, context, group, host=group.source,
        migration_uuid=None, reasons=dict(group.reasons)),
        priority='error')


@_never_fails
def recovery(context, group, action, reason=None):
    _emit(context, vocabulary.NotificationEvent.RECOVERY, _group(
        MultiDestRecoveryPayload, context, group, action=action,
        reason=reason))
