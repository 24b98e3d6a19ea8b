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

"""A small QMP client: commands, and events as they happen.

The session elects the first destination whose incoming migration
completed, so events must be seen when QEMU emits them, not when some
thread next polls. A reader thread therefore owns the socket: it hands
command replies to the waiting caller and queues (or calls back) every
asynchronous event.
"""

import array
import collections
import json
import logging
import socket
import threading
import time

from nova_multidest import exceptions

LOG = logging.getLogger(__name__)

# Events nobody waited for are kept for wait_event, up to this many.
EVENT_BACKLOG = 1000


class QMPEvent(dict):
    """One asynchronous QMP event (the decoded JSON object)."""

    @property
    def name(self):
        return self['event']

    @property
    def data(self):
        return self.get('data', {})

    @property
    def timestamp(self):
        """When QEMU emitted the event, as ``time.time()`` seconds."""
        stamp = self.get('timestamp') or {}
        if 'seconds' not in stamp:
            return time.time()
        return stamp['seconds'] + stamp.get('microseconds', 0) / 1e6


class QMPClient(object):
    """A QMP session over one connected stream socket.

    Use ``connect(path)`` when QEMU listens, or ``accept(listener)`` when
    QEMU was told to connect to us (no polling for a socket file to
    appear). Thread-safe: several threads may execute commands.
    """

    def __init__(self, sock, name='qemu'):
        self.name = name
        self._sock = sock
        self._file = sock.makefile('rb')
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._replies = {}
        self._events = collections.deque(maxlen=EVENT_BACKLOG)
        self._callbacks = []
        self._next_id = 0
        self._closed = False
        self.greeting = self._read_message()
        if self.greeting is None or 'QMP' not in self.greeting:
            raise exceptions.QMPError(command='greeting',
                                      reason='no QMP greeting from %s' % name)
        self._reader = threading.Thread(
            target=self._read_loop, name='qmp-%s' % name, daemon=True)
        self._reader.start()
        self.execute('qmp_capabilities')

    @classmethod
    def connect(cls, path, name='qemu', timeout=10.0):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(path)
        sock.settimeout(None)
        return cls(sock, name=name)

    @classmethod
    def accept(cls, listener, name='qemu', timeout=10.0, alive=None):
        """Accept QEMU's connection on ``listener``.

        ``alive`` is a callable telling whether QEMU still runs, so a QEMU
        that failed to start is reported at once instead of after
        ``timeout``.
        """
        deadline = time.monotonic() + timeout
        listener.settimeout(0.1)
        while True:
            try:
                sock, _ = listener.accept()
                break
            except socket.timeout:
                if alive is not None and not alive():
                    raise exceptions.QMPError(
                        command='connect',
                        reason='%s exited before opening QMP' % name)
                if time.monotonic() > deadline:
                    raise exceptions.QMPError(
                        command='connect',
                        reason='%s did not open QMP in %ss' % (name, timeout))
        sock.settimeout(None)
        return cls(sock, name=name)

    def _read_message(self):
        line = self._file.readline()
        if not line:
            return None
        return json.loads(line)

    def _read_loop(self):
        try:
            while True:
                msg = self._read_message()
                if msg is None:
                    break
                if 'event' in msg:
                    event = QMPEvent(msg)
                    LOG.debug('%s event %s %s', self.name, event.name,
                              event.data)
                    with self._cond:
                        self._events.append(event)
                        callbacks = list(self._callbacks)
                        self._cond.notify_all()
                    for callback in callbacks:
                        try:
                            callback(event)
                        except Exception:
                            LOG.exception('QMP event callback failed')
                elif 'id' in msg:
                    with self._cond:
                        self._replies[msg['id']] = msg
                        self._cond.notify_all()
        except (OSError, ValueError) as exc:
            LOG.debug('%s QMP reader stopped: %s', self.name, exc)
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    @property
    def closed(self):
        return self._closed

    def add_event_callback(self, callback):
        """Call ``callback(QMPEvent)`` from the reader thread."""
        with self._cond:
            self._callbacks.append(callback)

    def execute(self, command, timeout=30.0, **arguments):
        """Run ``command``; return its ``return`` value.

        Raises QMPError with QEMU's own error text, or when QEMU went away.
        """
        return self._execute(command, timeout, arguments, ())

    def getfd(self, fdname, fd, timeout=30.0):
        """Hand QEMU a file descriptor it knows as ``fdname`` afterwards.

        QEMU then uses a socket we connected or bound instead of opening
        a path or port of the host itself.
        """
        self._execute('getfd', timeout, {'fdname': fdname}, (fd,))

    def _execute(self, command, timeout, arguments, fds):
        with self._cond:
            if self._closed:
                raise exceptions.QMPError(
                    command=command, reason='%s is gone' % self.name)
            self._next_id += 1
            msg_id = self._next_id
        msg = {'execute': command, 'id': msg_id}
        if arguments:
            msg['arguments'] = arguments
        data = json.dumps(msg).encode() + b'\n'
        try:
            with self._send_lock:
                if fds:
                    sent = self._sock.sendmsg(
                        [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                  array.array('i', fds))])
                    data = data[sent:]
                self._sock.sendall(data)
        except OSError as exc:
            raise exceptions.QMPError(command=command, reason=str(exc))
        deadline = time.monotonic() + timeout
        with self._cond:
            while msg_id not in self._replies:
                remaining = deadline - time.monotonic()
                if self._closed:
                    raise exceptions.QMPError(
                        command=command, reason='%s is gone' % self.name)
                if remaining <= 0:
                    raise exceptions.QMPError(
                        command=command, reason='no reply in %ss' % timeout)
                self._cond.wait(remaining)
            reply = self._replies.pop(msg_id)
        if 'error' in reply:
            raise exceptions.QMPError(command=command,
                                      reason=reply['error'].get('desc'))
        return reply.get('return')

    def hmp(self, command_line, timeout=30.0):
        """Run a human-monitor command (e.g. ``info registers``)."""
        return self.execute('human-monitor-command', timeout=timeout,
                            **{'command-line': command_line})

    def wait_event(self, name, predicate=None, timeout=30.0):
        """Take the first queued event ``name`` matching ``predicate``.

        Waits up to ``timeout`` seconds for it; returns None on timeout or
        when QEMU went away first.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self._events:
                    if event.name == name and (predicate is None or
                                               predicate(event)):
                        self._events.remove(event)
                        return event
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def clear_events(self):
        with self._cond:
            self._events.clear()

    def close(self):
        """Close the socket and wait for the reader thread to end."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        if self._reader is not threading.current_thread():
            self._reader.join(5)
