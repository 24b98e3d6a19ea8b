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

"""The RPC endpoint of nova-multidest-conductor."""

from oslo_log import log as logging
import oslo_messaging as messaging
from oslo_service import periodic_task

from nova.compute import task_states
from nova.compute import utils as compute_utils
from nova import context as nova_context
from nova import manager
from nova import objects
from nova import thread_pool_factory

from nova_multidest.conductor import clients as clients_mod
from nova_multidest.conductor import recovery
from nova_multidest.conductor import service_record
from nova_multidest.conductor.tasks import live_migrate_multi
from nova_multidest.conductor import unstarted
from nova_multidest import conf
from nova_multidest import exceptions
from nova_multidest import vocabulary

LOG = logging.getLogger(__name__)
CONF = conf.CONF

# Seconds between two looks for requests no conductor started.
UNSTARTED_CHECK_SPACING = 60
# Seconds between two looks for groups whose conductor went down.
RECOVERY_SPACING = 60


class MultiDestConductorManager(manager.Manager):
    """Runs multi-destination live migrations and recovers them."""

    target = messaging.Target(version='1.0')

    def __init__(self, *args, **kwargs):
        super().__init__(service_name='multidest-conductor', *args,
                         **kwargs)
        service_record.ensure(nova_context.get_admin_context(), self.host,
                              CONF.multidest.conductor_topic)
        self.clients = clients_mod.Clients()
        self._recovery = None
        # Instance uuids of the groups this process drives.
        self._running = set()

    def post_start_hook(self):
        """Finish or roll back what a previous conductor left running.

        In the background: RPC is up, so recovery can call computes, and
        the service reports itself up meanwhile.
        """
        self._recovery = thread_pool_factory.spawn(self.recover)

    def recover(self, at_start=True):
        context = nova_context.get_admin_context()
        try:
            recovery.recover_all(context, self.clients, self.stopping,
                                 at_start=at_start,
                                 running=frozenset(self._running),
                                 host=self.host)
        except Exception:
            LOG.exception('Recovery of interrupted migrations failed; it '
                          'runs again at the next start')

    @periodic_task.periodic_task(spacing=RECOVERY_SPACING)
    def _recover_expired(self, context):
        """Take over the groups of conductors whose service went down."""
        if self._recovery is not None and not self._recovery.done():
            return
        self.recover(at_start=False)

    def stopping(self):
        return self._shutdown_in_progress.is_set()

    def live_migrate_multi(self, context, instance, destinations=None,
                           count=None, block_migration='auto',
                           warm_up=False):
        """Run the group on a thread of its own and return at once.

        A group lasts as long as its stream; holding an RPC worker that
        long would make service stop wait for it, while everything a
        stopped conductor leaves behind is recovery's job anyway.
        """
        thread_pool_factory.spawn(
            self._run_group, context, instance, destinations, count,
            block_migration, warm_up)

    def _run_group(self, context, instance, destinations, count,
                   block_migration, warm_up):
        context = context.elevated()
        try:
            mapping = objects.InstanceMapping.get_by_instance_uuid(
                context, instance.uuid)
            nova_context.set_target_cell(context, mapping.cell_mapping)
            instance = objects.Instance.get_by_uuid(
                context, instance.uuid,
                expected_attrs=list(vocabulary.INSTANCE_ATTRS))
        except Exception:
            # Without its cell the request cannot be rolled back here; the
            # periodic check of unstarted requests does it.
            LOG.exception('Could not load the instance of a '
                          'multi-destination request', instance=instance)
            return
        if instance.task_state != task_states.MIGRATING:
            LOG.warning('Request ignored: task_state is %s, it was rolled '
                        'back meanwhile', instance.task_state,
                        instance=instance)
            return
        try:
            late = unstarted.too_old(context, instance)
        except Exception:
            LOG.exception('Could not tell the age of the request; it runs',
                          instance=instance)
            late = False
        if late:
            unstarted.abandon(context, instance, exceptions.RequestNotStarted(
                seconds=CONF.multidest.accept_timeout // 2))
            return
        task = None
        self._running.add(instance.uuid)
        try:
            with compute_utils.EventReporter(
                    context, vocabulary.EVENT_LIVE_MIGRATION, CONF.host,
                    instance.uuid, graceful_exit=True):
                task = self._build_live_migrate_multi_task(
                    context, instance, destinations, count, block_migration,
                    warm_up)
                task.execute()
        except exceptions.ConductorStopping:
            LOG.info('Stopping: migration left to recovery',
                     instance=instance)
        except (exceptions.AllDestinationsFailed,
                exceptions.InvalidMigrationRequest) as error:
            LOG.warning('%s', error, instance=instance)
        except Exception as error:
            # The task's rollback has ended the group, or left it to
            # recovery; a group that never started is rolled back here.
            LOG.exception('Multi-destination live migration failed',
                          instance=instance)
            if task is None or not task.group.started:
                unstarted.abandon(context, instance,
                                  exceptions.GroupNotStarted(reason=error))
        finally:
            self._running.discard(instance.uuid)

    @periodic_task.periodic_task(spacing=UNSTARTED_CHECK_SPACING,
                                 run_immediately=True)
    def _roll_back_unstarted(self, context):
        """Bound the life of a request no conductor started."""
        unstarted.roll_back_unstarted(context.elevated())

    def _build_live_migrate_multi_task(self, context, instance, destinations,
                                       count, block_migration, warm_up):
        return live_migrate_multi.LiveMigrateMultiTask(
            context, instance, self.clients, destinations=destinations,
            count=count, block_migration=block_migration, warm_up=warm_up,
            stopping=self.stopping, owner=self.host)
