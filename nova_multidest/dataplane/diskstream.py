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

"""The disk stream: one disk's writes, in order, as a byte stream.

NBD is request and reply, but the stream relay moves one-way byte
streams to N destinations (star or chain, with lag limits, repair and
authenticated hops). So the disk relay turns each write the source's
mirror job sends into a record of this stream, and each destination's
writer replays the records against its own QEMU's export. Every record
is a fixed header, then ``length`` payload bytes for DISK and WRITE::

    kind (1 byte), pad (1), NBD command flags (2), length (4), offset (8)

A stream starts with DISK (JSON ``{"disk": name, "size": bytes}``) and
is complete only if it ends with END: a stream cut anywhere else (the
source aborted, the relay dropped this destination) must never count as
a copied disk, whatever the transport says about how it closed.
"""

import json
import struct

from nova_multidest import exceptions

RECORD = struct.Struct('!BxHIQ')

DISK = 1
WRITE = 2
ZERO = 3
TRIM = 4
FLUSH = 5
END = 6
KINDS = frozenset((DISK, WRITE, ZERO, TRIM, FLUSH, END))
_NAMES = {DISK: 'disk', WRITE: 'write', ZERO: 'zero', TRIM: 'trim',
          FLUSH: 'flush', END: 'end'}
MAX_HEADER_PAYLOAD = 4096


def record(kind, offset=0, length=0, flags=0):
    """The header of one record."""
    return RECORD.pack(kind, flags, length, offset)


def disk_record(name, size):
    """The opening record that names the disk and its size."""
    payload = json.dumps({'disk': name, 'size': size}).encode()
    return record(DISK, length=len(payload)) + payload


def kind_name(kind):
    return _NAMES.get(kind, 'unknown(%d)' % kind)


def read_header(sock):
    """The next record's ``(kind, flags, offset, length)``.

    None at a clean end of the connection before a record starts;
    EOFError if it ends inside one.
    """
    buf = bytearray(RECORD.size)
    view = memoryview(buf)
    got = 0
    while got < RECORD.size:
        count = sock.recv_into(view[got:])
        if not count:
            if not got:
                return None
            raise EOFError('disk stream cut inside a record header')
        got += count
    kind, flags, length, offset = RECORD.unpack(buf)
    if kind not in KINDS:
        raise exceptions.NBDError(peer='disk stream',
                                  reason='unknown record kind %d' % kind)
    return kind, flags, offset, length


def parse_disk(payload):
    """``(name, size)`` from a DISK record's payload."""
    try:
        header = json.loads(payload)
        return str(header['disk']), int(header['size'])
    except (ValueError, KeyError, TypeError):
        raise exceptions.NBDError(peer='disk stream',
                                  reason='malformed opening record')
