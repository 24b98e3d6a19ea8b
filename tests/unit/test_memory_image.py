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

"""Comparing two copies of a guest's RAM page by page."""

import struct

import testtools

from nova_multidest.dataplane import qemu

PAGE = qemu.PAGE


def ram(pages=16, writes=()):
    """``pages`` pages of zeros with ``(address, word)`` written in."""
    data = bytearray(pages * PAGE)
    for address, word in writes:
        data[address:address + 4] = struct.pack('<I', word)
    return qemu.MemoryImage(bytes(data))


class MemoryImageTest(testtools.TestCase):

    def test_same_ram_is_equal_and_has_no_differences(self):
        a, b = ram(writes=[(PAGE, 7)]), ram(writes=[(PAGE, 7)])
        self.assertEqual(a, b)
        self.assertEqual(a.digest, b.digest)
        self.assertEqual([], a.differences(b))
        self.assertEqual('0 of 16 pages differ', a.describe_differences(b))

    def test_differences_name_each_page_at_its_first_differing_word(self):
        source = ram(writes=[(2 * PAGE, 9), (5 * PAGE, 4),
                             (5 * PAGE + 100, 1)])
        copy = ram(writes=[(2 * PAGE, 8), (5 * PAGE, 4)])
        self.assertNotEqual(source, copy)
        self.assertEqual([qemu.PageDifference(2 * PAGE, 9, 8),
                          qemu.PageDifference(5 * PAGE + 100, 1, 0)],
                         source.differences(copy))
        self.assertEqual(
            '2 of 16 pages differ (first differing word: in the reference / '
            'in the copy): 0x2000: 0x9 / 0x8, 0x5064: 0x1 / 0x0',
            source.describe_differences(copy))
        self.assertEqual([0, 1, 0], source.words(5 * PAGE + 96, 3))

    def test_description_stops_at_the_limit(self):
        source = ram(writes=[(i * PAGE, i + 1) for i in range(10)])
        text = source.describe_differences(ram(), limit=2)
        self.assertTrue(text.startswith('10 of 16 pages differ'), text)
        self.assertEqual(['0x0: 0x1 / 0x0', '0x1000: 0x2 / 0x0'],
                         text.split('): ', 1)[1].split(', '))

    def test_a_shorter_copy_differs_in_its_missing_pages(self):
        found = ram(pages=4).differences(ram(pages=3))
        self.assertEqual([qemu.PageDifference(3 * PAGE, 0, None)], found)
        self.assertIn('0x3000: 0x0 / none',
                      ram(pages=4).describe_differences(ram(pages=3)))
