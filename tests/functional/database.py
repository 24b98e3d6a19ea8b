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

"""Writer transactions that own SQLite's write lock from their start.

On native threads Nova's harness keeps every database (API, cells,
Placement) in a file-backed WAL SQLite, and its ``DatabaseWriteLock``
serializes writer transactions per database. That is not enough:
oslo.db begins each SQLite transaction with a plain (deferred) ``BEGIN``,
so a writer reads under a snapshot first and asks for SQLite's write lock
only at its first write, and SQLite never waits for such an upgrade (its
busy timeout does not apply): whoever holds the write lock at that
instant makes the write fail at once with ``database is locked``. Readers
do hold it for a moment: oslo.db opens and closes a connection per
transaction (NullPool), the last one to close removes the WAL and its
index, and the next connection to open rebuilds that index under the
write lock. ``ImmediateWriterTransactions`` begins a writer transaction
with ``BEGIN IMMEDIATE`` instead: it takes the write lock before any read,
where SQLite waits for it, and reader transactions are left as they are.
"""

import collections
import contextlib
import threading

import fixtures
from oslo_db.sqlalchemy import enginefacade
import sqlalchemy
from sqlalchemy import event

from nova import utils as nova_utils

_Scope = collections.namedtuple('_Scope', 'url mode context independent')


class ImmediateWriterTransactions(fixtures.Fixture):
    """Each SQLite writer transaction begins IMMEDIATE (native threads).

    Which transaction a ``BEGIN`` opens is told by the enginefacade scopes
    the calling thread is in: a scope joins the enclosing one of the same
    database and context unless it is ``independent``, so the outermost
    of those decides whether the transaction writes.
    """

    def _setUp(self):
        if not nova_utils.concurrency_mode_threading():
            # Eventlet: one in-memory connection per database, no WAL.
            return
        self._local = threading.local()
        manager_class = enginefacade._TransactionContextManager
        real_scope = manager_class._transaction_scope
        scopes = self._scopes

        @contextlib.contextmanager
        def scope(manager, context):
            stack = scopes()
            stack.append(_Scope(manager.reader.get_engine().url,
                                manager._mode, context,
                                manager._independent))
            try:
                with real_scope(manager, context) as resource:
                    yield resource
            finally:
                stack.pop()

        self.useFixture(fixtures.MockPatchObject(
            manager_class, '_transaction_scope', scope))
        event.listen(sqlalchemy.engine.Engine, 'before_cursor_execute',
                     self._begin, retval=True)
        self.addCleanup(event.remove, sqlalchemy.engine.Engine,
                        'before_cursor_execute', self._begin)

    def _scopes(self):
        stack = getattr(self._local, 'stack', None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def writes(self, url):
        """Whether the thread's transaction on ``url`` is a writer's.

        The innermost scope of ``url`` runs; it joins the scope of its
        context that encloses it next if that one is of the same database
        and it is not ``independent``, and so on outwards.
        """
        root = None
        for scope in reversed(self._scopes()):
            if root is None:
                if scope.url == url:
                    root = scope
                continue
            if scope.context is not root.context:
                continue
            if scope.url != url or root.independent:
                break
            root = scope
        return root is not None and root.mode is enginefacade._WRITER

    def _begin(self, conn, cursor, statement, parameters, context,
               executemany):
        if (statement == 'BEGIN' and conn.dialect.name == 'sqlite' and
                self.writes(conn.engine.url)):
            statement = 'BEGIN IMMEDIATE'
        return statement, parameters
