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

"""Settings of a multi-destination session, checked before anything runs."""

import io

import testtools

from nova_multidest.cmd import demo
from nova_multidest.dataplane import demo_session
from nova_multidest import exceptions
from nova_multidest import vocabulary


class SettingsTest(testtools.TestCase):

    def test_defaults_are_valid(self):
        demo_session.Settings().validate(['a', 'b'])

    def test_rejected(self):
        cases = [
            ([], {}, 'at least one destination'),
            (['a', 'b', 'a'], {}, 'listed more than once: a'),
            (['a'], {'topology': 'mesh'}, "unknown topology 'mesh'"),
            (['a'], {'min_destinations': 0}, 'min_destinations'),
            (['a'], {'max_rounds': 0}, 'max_rounds'),
            (['a'], {'election_timeout': 0}, 'election_timeout'),
            (['a'], {'lag_limit': 0}, 'lag_limit'),
            # The source stream's own settings are checked too.
            (['a'], {'capabilities': {'bogus': True}}, "'bogus'"),
            (['a'], {'warm_up_percent': 0}, 'warm_up_percent'),
        ]
        for names, kwargs, text in cases:
            with self.subTest(kwargs=kwargs):
                settings = demo_session.Settings(**kwargs)
                err = self.assertRaises(exceptions.InvalidSettings,
                                        settings.validate, names)
                self.assertIn(text, str(err))


class ProgressBoardTest(testtools.TestCase):

    def test_without_terminal_prints_only_changes(self):
        out = io.StringIO()
        board = demo.ProgressBoard(['d0'], out)
        for percent in (0.0, 10.0, 20.0, 30.0):
            board.update({'d0': demo_session.DestinationProgress(
                vocabulary.DestinationState.STREAMING, int(percent * 1e6),
                percent)})
        board.update({'d0': demo_session.DestinationProgress(
            vocabulary.DestinationState.REMOVED, 30000000, 30.0,
            'hypervisor exited')})
        lines = out.getvalue().splitlines()
        self.assertEqual(3, len(lines), lines)
        self.assertNotIn('\x1b', out.getvalue())
        self.assertIn('30.0%', lines[1])
        self.assertIn('removed (hypervisor exited)', lines[2])
