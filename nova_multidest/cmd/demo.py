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

"""Live-migrate a running QEMU guest to several destinations at once.

The demo is the project's main command (``tools/run demo``): with nothing
but QEMU installed it shows the invention working on real guests. It boots
a tiny guest that keeps dirtying its memory, migrates it through the
stream relay to N paused destinations, kills one destination mid-stream,
elects the first destination holding the complete state, runs it, removes
the others, and then checks what must be true afterwards. It exits
non-zero if any check fails and never leaves a QEMU process behind.
"""

import argparse
import logging
import os
import signal
import sys
import threading
import time

from nova_multidest.dataplane import demo_session
from nova_multidest.dataplane import guest
from nova_multidest.dataplane import qemu
from nova_multidest import vocabulary

LOG = logging.getLogger(__name__)
MiB = 1 << 20
BAR_WIDTH = 30


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='nova-multidest-demo',
        description='Migrate a live QEMU guest to several destinations at '
                    'once; the first to hold the complete state wins.')
    parser.add_argument('--destinations', type=int, default=3, metavar='N',
                        help='number of destinations (default 3)')
    parser.add_argument('--topology', choices=vocabulary.Topology.ALL,
                        default=vocabulary.Topology.STAR,
                        help='star: the source sends to each destination; '
                             'chain: each destination forwards to the next')
    parser.add_argument('--memory', type=int, default=128, metavar='MiB',
                        help='guest RAM (default 128)')
    parser.add_argument('--bandwidth', type=int, default=100,
                        metavar='MiB/s',
                        help='migration bandwidth cap, so that the stream '
                             'lasts long enough to watch (default 100; 0 '
                             'for unlimited)')
    parser.add_argument('--warm-up', action='store_true',
                        help='keep pre-copying until every page was copied '
                             'once to all destinations, then switch over')
    parser.add_argument('--no-kill', action='store_true',
                        help='do not kill a destination mid-stream')
    parser.add_argument('-v', '--verbose', action='store_true',
                        help='log what the session does')
    args = parser.parse_args(argv)
    if args.destinations < 1:
        parser.error('--destinations must be at least 1')
    if args.memory < 64:
        parser.error('--memory must be at least 64 MiB')
    if args.bandwidth < 0:
        parser.error('--bandwidth must not be negative')
    return args


class ProgressBoard(object):
    """One progress line per destination.

    On a terminal the lines are redrawn in place; otherwise a line is
    printed only when a destination changes state or passes a quarter,
    so logs and CI output stay readable.
    """

    def __init__(self, names, out=sys.stdout):
        self.names = list(names)
        self.out = out
        self.tty = out.isatty()
        self._drawn = False
        self._last = {}
        self._lock = threading.Lock()

    @staticmethod
    def line(name, progress):
        filled = int(BAR_WIDTH * progress.percent / 100)
        bar = '#' * filled + '.' * (BAR_WIDTH - filled)
        text = '%-4s [%s] %5.1f%% %8.1f MiB  %s' % (
            name, bar, progress.percent, progress.bytes / MiB,
            progress.state)
        if (progress.reason and
                progress.state in vocabulary.DestinationState.GONE):
            text += ' (%s)' % progress.reason
        return text

    def update(self, progress):
        with self._lock:
            if self.tty:
                self._redraw(progress)
            else:
                self._append(progress)

    def _redraw(self, progress):
        if self._drawn:
            self.out.write('\x1b[%dA' % len(self.names))
        for name in self.names:
            if name in progress:
                self.out.write('\x1b[2K%s\n' % self.line(name,
                                                         progress[name]))
            else:
                self.out.write('\x1b[2K%s\n' % name)
        self._drawn = True
        self.out.flush()

    def _append(self, progress):
        for name in self.names:
            current = progress.get(name)
            if current is None:
                continue
            key = (current.state, int(current.percent // 25))
            if self._last.get(name) != key:
                self._last[name] = key
                self.out.write(self.line(name, current) + '\n')
        self.out.flush()


class Demo(object):

    def __init__(self, args, out=sys.stdout):
        self.args = args
        self.out = out
        self.hypervisor = qemu.QemuHypervisor()
        self.names = ['dest%d' % i for i in range(args.destinations)]
        self.victim = None
        if not args.no_kill and args.destinations > 1:
            self.victim = self.names[len(self.names) // 2]
        self.destinations = {}
        self.digests = {}
        self.killed = False
        self.failures = []

    def say(self, text, *args):
        self.out.write((text % args if args else text) + '\n')
        self.out.flush()

    def check(self, ok, text):
        self.say('  [%s] %s', 'ok' if ok else 'FAILED', text)
        if not ok:
            self.failures.append(text)

    def image(self):
        # Fill most of RAM once so the first pass carries real data, then
        # keep dirtying 8 MiB: the stream then lasts long enough to watch
        # and to kill a destination in the middle of it. Warm-up needs a
        # guest that dirties faster than QEMU could converge on by itself.
        fill = (self.args.memory - 16) * MiB
        return guest.DirtyingGuest(
            dirty_size=8 * MiB, fill_size=fill,
            pages_per_tick=0 if self.args.warm_up else 64)

    def _on_ready(self, name, destination):
        self.destinations[name] = destination

    def _on_progress(self, progress):
        victim = progress.get(self.victim)
        if (victim is not None and not self.killed and
                victim.state == vocabulary.DestinationState.STREAMING and
                victim.percent >= 30):
            process = self.destinations[self.victim].process
            LOG.info('Killing %s (pid %s)', self.victim, process.pid)
            process.kill(signal.SIGKILL)
            self.killed = True
            self.killed_at_percent = victim.percent
        self.board.update(progress)

    def _approve(self, name):
        # The guest is paused on both sides now: the winner must hold
        # exactly the source's memory before it may run. Both digests at
        # once, since this time counts as downtime.
        def digest(key, guest_handle):
            self.digests[key] = guest_handle.memory_digest()

        threads = [threading.Thread(target=digest, args=args) for args in
                   (('source', self.source),
                    (name, self.destinations[name]))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return True

    def run(self):
        args = self.args
        self.say('Booting a %d MiB guest that keeps dirtying its memory...',
                 args.memory)
        process = self.hypervisor.boot('source', memory_mb=args.memory,
                                       image=self.image())
        self.source = self.hypervisor.source(process)
        settings = demo_session.Settings(
            topology=args.topology,
            max_bandwidth=args.bandwidth * MiB,
            warm_up=args.warm_up, warm_up_exit=vocabulary.WarmUpExit.COPIED,
            election_timeout=20, completion_timeout=50)
        self.say('Migrating it live to %d destinations (%s)%s%s:',
                 args.destinations, args.topology,
                 ', warm-up first' if args.warm_up else '',
                 ', %s will be killed mid-stream' % self.victim
                 if self.victim else '')
        self.board = ProgressBoard(self.names, self.out)
        migration = demo_session.Session(
            self.hypervisor, self.source, self.names, settings,
            approve_winner=self._approve, on_progress=self._on_progress,
            on_destination_ready=self._on_ready)
        migration.start()
        try:
            if args.warm_up:
                while not (migration.warm_up_ready.wait(0.2) or
                           migration.finished()):
                    pass
                if not migration.finished():
                    self.say('Warm-up exit condition reached on every '
                             'destination; switching over.')
                    migration.switch_over()
            result = migration.wait(60)
        except BaseException:
            migration.abort('demo interrupted')
            migration.wait(30)
            raise
        self.report(result)
        self.verify(result)
        return 1 if self.failures else 0

    def report(self, result):
        self.say('')
        if result.winner is None:
            self.say('No destination won: %s', result.error)
            self.say('The guest keeps running on the source: %s',
                     self.source.is_running())
            return
        self.say('Winner: %s', result.winner)
        self.say('Downtime: %.0f ms (source stopped -> winner resumed; %.0f'
                 ' ms of it spent checking RAM digests before the resume)',
                 result.downtime_ms or 0, result.approval_ms or 0)
        self.say('Total migration time: %.2f s', result.total_time_s)
        self.say('Bytes from the source: %.1f MiB',
                 result.bytes_from_source / MiB)
        for name in self.names:
            self.say('  %-6s %8.1f MiB  %s', name,
                     result.bytes_by_destination.get(name, 0) / MiB,
                     'winner' if name == result.winner else
                     result.reasons.get(name, ''))

    def verify(self, result):
        self.say('')
        self.say('Checks:')
        self.check(result.winner is not None, 'a destination won')
        if result.winner is None:
            return
        winner = self.destinations[result.winner]
        self.check(self.digests.get('source') is not None and
                   self.digests.get('source') == self.digests.get(
                       result.winner),
                   'guest RAM digest of the winner equals the source '
                   '(%s...)' % (self.digests.get(result.winner) or '')[:16])
        self.check(winner.is_running() and self._advances(winner.process),
                   'the winner runs and its guest keeps changing memory')
        if self.victim:
            self.check(self.killed and self.victim != result.winner,
                       '%s was killed mid-stream and did not win'
                       % self.victim)
        for name in self.names:
            if name == result.winner:
                continue
            dest = self.destinations.get(name)
            gone = dest is None or (not dest.is_alive() and
                                    not os.path.exists(dest.process.dir))
            self.check(gone, '%s: process gone, directory removed' % name)

    def _advances(self, process):
        image = self.image()
        first = process.read_u32(image.dirty_start)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if process.read_u32(image.dirty_start) != first:
                return True
            time.sleep(0.05)
        return False

    def cleanup(self):
        self.hypervisor.destroy_all()
        left = [p.pid for p in self.hypervisor.processes if p.is_alive()]
        self.check(not left, 'no QEMU process left (%d started)'
                   % len(self.hypervisor.processes))


def main(argv=None):
    args = parse_args(argv)
    # Without -v the progress board already says why a destination went.
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format='%(asctime)s %(levelname)s %(name)s: %(message)s',
        stream=sys.stderr)
    # Ctrl-C and SIGTERM take the same path: abort, then kill every QEMU.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    demo = Demo(args)
    status = 1
    try:
        status = demo.run()
    except KeyboardInterrupt:
        demo.say('Interrupted.')
    except Exception as exc:
        LOG.exception('Demo failed')
        demo.say('Demo failed: %s', exc)
    finally:
        demo.cleanup()
    if demo.failures:
        status = 1
    demo.say('Result: %s', 'PASS' if status == 0 else 'FAIL')
    return status


if __name__ == '__main__':
    sys.exit(main())
