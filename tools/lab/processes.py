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

"""The lab's processes: started with a log each, found again by PID file.

``tools/run lab down`` may run in another process than ``up``, so every
process the lab starts is recorded in ``<lab>/pids/<name>.pid`` with its
start time: a PID the kernel reused for someone else's process is never
signalled.
"""

import json
import os
import signal
import subprocess
import time

POLL_INTERVAL = 0.2
STOP_TIMEOUT = 15
LOG_TAIL = 3000


class LabError(Exception):
    """The lab cannot do what was asked; the message says what to do."""


def _start_time(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            fields = f.read().rsplit(')', 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == 'Z':
        return None
    return int(fields[19])


def alive(pid, start_time=None):
    started = _start_time(pid)
    return started is not None and start_time in (None, started)


def log_tail(path, size=LOG_TAIL):
    try:
        with open(path, 'rb') as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode('utf-8', 'replace')
    except OSError:
        return ''


def wait_until(predicate, timeout, what, interval=POLL_INTERVAL):
    """Poll ``predicate`` until true; raise LabError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise LabError('%s: not done within %ss' % (what, timeout))
        time.sleep(interval)


class Process(object):
    """One recorded process: a service, a namespace holder, a daemon."""

    def __init__(self, table, name):
        self.table = table
        self.name = name
        self.pid_file = os.path.join(table.pid_dir, name + '.pid')
        self.log_path = os.path.join(table.log_dir, name + '.log')

    def record(self):
        try:
            with open(self.pid_file) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    @property
    def pid(self):
        record = self.record()
        return record['pid'] if record else None

    def alive(self):
        record = self.record()
        return bool(record) and alive(record['pid'], record['start_time'])

    def start(self, argv, env=None, cwd=None):
        if self.alive():
            raise LabError('%s already runs (pid %d)' % (self.name, self.pid))
        full_env = dict(os.environ)
        full_env.update(env or {})
        with open(self.log_path, 'ab') as log:
            log.write(('--- %s: %s\n' % (time.strftime('%Y-%m-%d %H:%M:%S'),
                                         ' '.join(argv))).encode())
            log.flush()
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                start_new_session=True)
        # Reaped by nobody: the lab outlives this process.
        self.table.children.append(process)
        with open(self.pid_file, 'w') as f:
            json.dump({'pid': process.pid, 'argv': argv,
                       'start_time': _start_time(process.pid)}, f)
        return process.pid

    def check(self):
        """Raise if the process died: name it and point to its log."""
        if not self.alive():
            raise LabError('%s is not running; its log %s ends with:\n%s'
                           % (self.name, self.log_path,
                              log_tail(self.log_path)))

    def wait_ready(self, predicate, timeout):
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            try:
                if predicate():
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise LabError('%s did not become ready within %ss; see its '
                               'log %s:\n%s' % (self.name, timeout,
                                                self.log_path,
                                                log_tail(self.log_path)))
            time.sleep(POLL_INTERVAL)

    def kill(self):
        """SIGKILL its whole process group, as a crash; True if it ran.

        A service's launcher and its forked workers go together: a worker
        whose launcher alone was killed shuts down gracefully instead, and
        may even reconnect to a restarted broker on its way out.
        """
        record = self.record()
        if not record or not alive(record['pid'], record['start_time']):
            return False
        _signal_group(record['pid'], signal.SIGKILL)
        return True

    def group_alive(self):
        """Whether any process of its group still runs (zombies do not)."""
        record = self.record()
        return bool(record) and bool(_group_members(record['pid']))

    def signal(self, signum):
        record = self.record()
        if record and alive(record['pid'], record['start_time']):
            os.kill(record['pid'], signum)
            return True
        return False

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM its process group, SIGKILL what is left after timeout."""
        record = self.record()
        if record and alive(record['pid'], record['start_time']):
            pid = record['pid']
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while alive(pid, record['start_time']) and \
                    time.monotonic() < deadline:
                self.table.reap()
                time.sleep(POLL_INTERVAL)
            _signal_group(pid, signal.SIGKILL)
            while alive(pid, record['start_time']):
                self.table.reap()
                time.sleep(POLL_INTERVAL)
        try:
            os.unlink(self.pid_file)
        except FileNotFoundError:
            pass


def _group_members(pgid):
    """PIDs of the live (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry) as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != 'Z' and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def _signal_group(pid, signum):
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


class ProcessTable(object):
    """The recorded processes of one lab."""

    def __init__(self, pid_dir, log_dir):
        self.pid_dir = pid_dir
        self.log_dir = log_dir
        os.makedirs(pid_dir, exist_ok=True)
        os.makedirs(log_dir, exist_ok=True)
        self.children = []

    def __getitem__(self, name):
        return Process(self, name)

    def names(self):
        return sorted(name[:-4] for name in os.listdir(self.pid_dir)
                      if name.endswith('.pid'))

    def reap(self):
        for child in self.children:
            child.poll()
