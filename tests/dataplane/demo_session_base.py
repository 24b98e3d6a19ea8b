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

"""Shared set-up of the session tests: real QEMU guests, real relay."""

import os
import socket
import threading
import time

import testtools

from nova_multidest.dataplane import demo_session
from nova_multidest.dataplane import guest
from nova_multidest.dataplane import qemu
from tests.dataplane import qemu_fixture

MiB = 1 << 20
MEMORY_MB = 64


def wait_for(predicate, timeout=10.0, interval=0.02):
    """Poll ``predicate`` until true; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


class ThrottledProxy(object):
    """A unix-socket proxy that delivers at most ``rate`` bytes/s.

    Stands between a destination agent and its QEMU to make that
    destination slow, using only the hypervisor interface (the relay is
    not touched).
    """

    def __init__(self, path, target_path, rate):
        self.path = path
        self.target_path = target_path
        self.rate = rate
        self._closed = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(1)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        with conn, socket.socket(socket.AF_UNIX) as out:
            try:
                out.connect(self.target_path)
                chunk = max(1, self.rate // 50)
                while not self._closed.is_set():
                    data = conn.recv(chunk)
                    if not data:
                        break
                    out.sendall(data)
                    self._closed.wait(len(data) / self.rate)
            except OSError:
                pass

    def close(self):
        self._closed.set()
        self._listener.close()
        self._thread.join(5)


class SlowDestination(qemu.QemuDestination):
    """A destination whose QEMU receives through a ThrottledProxy."""

    rate = 1 * MiB

    @property
    def incoming_target(self):
        return 'unix:%s' % os.path.join(self.process.dir, 'slow.sock')

    def start_incoming(self, capabilities=None, multifd_channels=0):
        super().start_incoming(capabilities, multifd_channels)
        self.proxy = ThrottledProxy(self.incoming_target[len('unix:'):],
                                    self.listen_uri[len('unix:'):],
                                    self.rate)

    def destroy(self):
        proxy = getattr(self, 'proxy', None)
        if proxy is not None:
            proxy.close()
        super().destroy()


class _Hypervisor(qemu.QemuHypervisor):
    """Makes the destinations named in ``slow`` slow."""

    def __init__(self, processes, parent_dir, slow=()):
        super().__init__(parent_dir=parent_dir)
        self.processes = processes
        self.slow = set(slow)

    def create_destination(self, name, source):
        self.destination_class = (SlowDestination if name in self.slow
                                  else qemu.QemuDestination)
        return super().create_destination(name, source)


class SessionTestBase(testtools.TestCase):
    """Boots a source guest and runs sessions against it."""

    def setUp(self):
        super().setUp()
        self.qemu = self.useFixture(qemu_fixture.QemuFixture(MEMORY_MB))
        self.destinations = {}
        self.snapshots = {}

    def boot(self, fill_mb=0, dirty_mb=8, delay=64, pages_per_tick=16):
        """Boot the source; by default a guest that halts between ticks.

        Warm-up tests pass ``pages_per_tick=0`` for a guest that dirties
        memory as fast as it can, which QEMU cannot converge on by itself.
        """
        self.image = guest.DirtyingGuest(dirty_size=dirty_mb * MiB,
                                         fill_size=fill_mb * MiB,
                                         delay=delay,
                                         pages_per_tick=pages_per_tick)
        self.process = self.qemu.boot(image=self.image)
        self.source = self.qemu.hypervisor.source(self.process)
        return self.source

    def make_session(self, names, slow=(), snapshot=True, approve=None,
                     **settings):
        settings.setdefault('election_timeout', 20)
        settings.setdefault('completion_timeout', 60)
        # Same process list: the fixture's cleanup sees every QEMU.
        hypervisor = _Hypervisor(self.qemu.hypervisor.processes,
                                 self.qemu.workdir, slow)

        def on_ready(name, dest):
            self.destinations[name] = dest

        def approve_winner(name):
            if snapshot:
                self.take_snapshots(name)
            return approve(name) if approve else True

        migration = demo_session.Session(
            hypervisor, self.source, names, demo_session.Settings(**settings),
            approve_winner=approve_winner, on_destination_ready=on_ready,
            on_progress=self.on_progress)
        self.addCleanup(migration.abort, 'test cleanup')
        return migration

    def on_progress(self, progress):
        pass

    def take_snapshots(self, winner):
        """RAM (a MemoryImage) and registers of every paused copy.

        The source and each destination that completed, before the winner
        may run.
        """
        live = [n for n, d in self.destinations.items()
                if d.is_alive() and d.migration_status() != 'failed']
        for name in live:
            wait_for(lambda: self.destinations[name].migration_status() in
                     ('completed', 'failed'), timeout=10)
        self.snapshots['source'] = (self.process.memory_image(),
                                    self.process.registers())
        for name in live:
            dest = self.destinations[name]
            if dest.migration_status() == 'completed':
                self.snapshots[name] = (dest.process.memory_image(),
                                        dest.process.registers())

    def assert_identical_survivors(self, expected):
        self.assertEqual(sorted(expected),
                         sorted(n for n in self.snapshots if n != 'source'))
        for name in expected:
            self.assert_same_ram(name)
            self.assertEqual(self.snapshots['source'][1],
                             self.snapshots[name][1],
                             'registers of %s differ from the source' % name)

    def assert_same_ram(self, name):
        """The RAM of copy ``name`` is the source's, page for page.

        On failure, which pages differ and whether the other copies hold
        the same RAM as this one: copies that agree with each other got
        one stream, so what they lack was never sent.
        """
        source, copy = self.snapshots['source'][0], self.snapshots[name][0]
        if source == copy:
            return
        others = ', '.join(
            '%s %s' % (other, 'the same' if ram == copy else
                       'different RAM')
            for other, (ram, _) in sorted(self.snapshots.items())
            if other not in ('source', name))
        self.fail('RAM of %s differs from the source: %s; other copies: %s'
                  % (name, source.describe_differences(copy),
                     others or 'none'))

    def assert_guest_advances(self, process):
        first = process.read_u32(self.image.dirty_start)
        self.assertTrue(wait_for(
            lambda: process.read_u32(self.image.dirty_start) != first),
            'guest memory of %s does not change' % process.name)
        regs = process.registers()
        self.assertTrue(wait_for(lambda: process.registers() != regs),
                        'registers of %s do not change' % process.name)

    def assert_winner_only(self, result):
        """The winner runs; every other destination is gone entirely."""
        self.assertIsNotNone(result.winner, result.error)
        winner = self.destinations[result.winner]
        self.assertTrue(winner.is_running())
        self.assert_guest_advances(winner.process)
        for name, dest in self.destinations.items():
            if name == result.winner:
                continue
            self.assertFalse(dest.is_alive(), '%s still runs' % name)
            self.assertFalse(os.path.exists(dest.process.dir),
                             '%s left its directory' % name)
            self.assertIn(name, result.reasons)
        self.assertEqual(self.process.run_state(), 'postmigrate')
