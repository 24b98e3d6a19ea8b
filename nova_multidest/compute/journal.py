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

"""What a destination host prepared, kept on its local disk.

Nova's records say which migrations exist, but not what one destination
host did for one of several destinations of the same instance (Nova's
own per-instance fields hold one destination only). A compute that
restarts, or is asked to revert after a restart, reads that here: the
domain it created, the Cinder attachments it made and the migrate data
that says whether the instance directory is shared with the source (and
so must never be deleted).
"""

import json
import os

from oslo_log import log as logging

LOG = logging.getLogger(__name__)


class DestinationJournal(object):
    """One JSON file per migration in a directory private to this host."""

    def __init__(self, directory):
        self.directory = directory

    def _path(self, migration_uuid):
        return os.path.join(self.directory, '%s.json' % migration_uuid)

    def write(self, migration_uuid, record):
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        path = self._path(migration_uuid)
        partial = path + '.partial'
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, 'w') as f:
            json.dump(record, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)

    def read(self, migration_uuid):
        try:
            with open(self._path(migration_uuid)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except ValueError:
            LOG.warning('Ignoring unreadable journal entry of migration %s',
                        migration_uuid)
            return None

    def delete(self, migration_uuid):
        try:
            os.unlink(self._path(migration_uuid))
        except FileNotFoundError:
            pass

    def migration_uuids(self):
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(name[:-len('.json')] for name in names
                      if name.endswith('.json'))
