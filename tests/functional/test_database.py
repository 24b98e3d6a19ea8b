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

"""The harness's SQLite transactions (``database.py``).

A writer transaction must hold SQLite's write lock from its first
statement on, so that it never has to upgrade a read (which SQLite refuses
at once, ``database is locked``, when a reader holds the lock for a
moment); a reader must not take it, or a read nested in a writer of the
same database would wait for that writer.
"""

import sqlite3

from nova import context as nova_context
from nova.db.api import api as api_db_api
from nova.db.main import api as main_db_api
from nova import utils as nova_utils
import sqlalchemy as sa

from tests.functional import base

COUNT = sa.text('SELECT count(*) FROM migrations')


class ImmediateWriterTransactionsTest(base.MultiDestTestBase):

    COMPUTES = 0

    def setUp(self):
        super().setUp()
        if not nova_utils.concurrency_mode_threading():
            self.skipTest('eventlet: Nova keeps each database in memory')
        self.ctxt = self.cell_context()
        self.manager = main_db_api.get_context_manager(self.ctxt)
        self.path = self.manager.writer.get_engine().url.database

    def write_lock_free(self):
        """Whether another connection could take the write lock now."""
        other = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        try:
            other.execute('BEGIN IMMEDIATE')
        except sqlite3.OperationalError as error:
            self.assertIn('database is locked', str(error))
            return False
        else:
            other.execute('ROLLBACK')
            return True
        finally:
            other.close()

    def test_writer_holds_the_write_lock_from_its_first_read(self):
        with self.manager.writer.using(self.ctxt) as session:
            session.execute(COUNT).all()
            self.assertFalse(self.write_lock_free())
        self.assertTrue(self.write_lock_free())

    def test_reader_leaves_the_write_lock_free(self):
        with self.manager.reader.using(self.ctxt) as session:
            session.execute(COUNT).all()
            self.assertTrue(self.write_lock_free())

    def test_reads_in_a_writer_through_other_transactions_do_not_wait(self):
        with self.manager.writer.using(self.ctxt) as session:
            session.execute(COUNT).all()
            # Another context: a transaction of its own.
            other = nova_context.get_admin_context()
            nova_context.set_target_cell(other, self.cell_mappings['cell1'])
            with self.manager.reader.using(other) as other_session:
                other_session.execute(COUNT).all()
            # The same context, after a scope of another database: its
            # own transaction too (enginefacade's one per context).
            with api_db_api.context_manager.reader.using(self.ctxt) as api:
                api.execute(sa.text('SELECT count(*) FROM cell_mappings'))
                with self.manager.reader.using(self.ctxt) as again:
                    again.execute(COUNT).all()
            self.assertFalse(self.write_lock_free())
