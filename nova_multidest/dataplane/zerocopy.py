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

"""Move stream bytes from one socket to another inside the kernel.

Most of the relay's and agents' CPU goes into copying every byte of the
migration stream into Python and back out to the next socket. When one
socket's bytes go to exactly one other socket, splice(2) through a pipe
moves them between the two without that copy. Sockets that cannot be
spliced (TLS lives in Python; some kernels lack a socket type) keep the
copying path: callers fall back on SpliceUnsupported.
"""

import errno
import fcntl
import os
import select

SUPPORTED = hasattr(os, 'splice') and hasattr(fcntl, 'F_SETPIPE_SZ')
PIPE_BYTES = 2**20
_FLAGS = (getattr(os, 'SPLICE_F_MOVE', 0) |
          getattr(os, 'SPLICE_F_NONBLOCK', 0))


class SpliceUnsupported(Exception):
    """These descriptors cannot be spliced; no byte was moved."""


def _wait(fd, events, timeout):
    poller = select.poll()
    poller.register(fd, events)
    if not poller.poll(None if timeout is None else timeout * 1000):
        raise TimeoutError('timed out')


class Splicer(object):
    """A pipe that carries bytes from a socket to another socket.

    ``fill`` takes bytes from one socket into the pipe, ``drain`` passes
    them on; a caller drains all it filled before filling again, so the
    pipe never holds more than one chunk. Both wait at most ``timeout``
    seconds (None: for ever) for their socket, then raise TimeoutError, as
    a socket with that timeout would.
    """

    def __init__(self):
        if not SUPPORTED:
            raise SpliceUnsupported('os.splice is not available')
        self._read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC |
                                                 os.O_NONBLOCK)
        try:
            fcntl.fcntl(self._write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass
        self.capacity = fcntl.fcntl(self._write_fd, fcntl.F_GETPIPE_SZ)
        self._copying = False

    def close(self):
        fds = (self._read_fd, self._write_fd)
        self._read_fd = self._write_fd = -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def fill(self, sock, limit, timeout=None):
        """Take up to ``limit`` bytes from ``sock``; 0 at its end."""
        limit = min(limit, self.capacity)
        fd = sock.fileno()
        while True:
            try:
                return os.splice(fd, self._write_fd, limit, flags=_FLAGS)
            except BlockingIOError:
                _wait(fd, select.POLLIN, timeout)
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    raise SpliceUnsupported(str(exc))
                raise

    def drain(self, sock, count, timeout=None):
        """Pass ``count`` bytes taken by fill() on to ``sock``."""
        fd = sock.fileno()
        while count:
            if self._copying:
                count -= self._copy_out(sock, count, timeout)
                continue
            try:
                count -= os.splice(self._read_fd, fd, count, flags=_FLAGS)
            except BlockingIOError:
                _wait(fd, select.POLLOUT, timeout)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # This socket takes no spliced pages: the bytes already
                # in the pipe leave it by copy, and so do the next ones.
                self._copying = True

    def _copy_out(self, sock, count, timeout):
        data = os.read(self._read_fd, min(count, self.capacity))
        sock.sendall(data)
        return len(data)
