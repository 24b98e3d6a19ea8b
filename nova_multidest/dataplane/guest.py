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

"""A tiny guest kernel that keeps dirtying memory, built at run time.

Migration tests need a guest that really runs and keeps changing its RAM
(otherwise pre-copy converges at once and the interesting paths are never
taken), boots in milliseconds under TCG, and needs no download and no
assembler. This module emits such a kernel as raw i386 machine code with a
multiboot header using the "a.out kludge" (flag bit 16), which QEMU's
``-kernel`` loads directly.

By default the kernel loops forever: it writes an incrementing counter into one
32-bit word every ``stride`` bytes of ``[dirty_start, dirty_start +
dirty_size)`` and spins ``delay`` times between writes, which sets its
dirty rate. The counter is also in EAX, so registers change too. First,
if ``fill_size`` is set, it writes once to every page of ``[dirty_start,
dirty_start + fill_size)``, so that the first migration pass carries that
much real data instead of cheap zero pages. With ``pages_per_tick`` set it
instead writes that many pages per timer tick and halts in between, which
keeps a steady dirty rate at almost no host CPU.

It deliberately has no "hot" page whose content changes: QEMU 7.2 under
TCG loses writes to a page whose TLB entry survives a dirty-bitmap sync
(the sync's fast path does not re-arm the TLB; fixed upstream in 2024,
"cpu_physical_memory_dirty_bits_cleared"), so such a page would differ
between source and destination. KVM is not affected. Sweeping many more
pages than the TCG TLB holds evicts each entry before its page is written
again, which keeps every write tracked. The one page written at every
tick, the timer mode's interrupt frame, gets the same bytes every time.
"""

import dataclasses
import os
import struct

MULTIBOOT_MAGIC = 0x1BADB002
MULTIBOOT_AOUT_KLUDGE = 1 << 16
LOAD_ADDRESS = 0x100000
HEADER_SIZE = 32
ENTRY_ADDRESS = LOAD_ADDRESS + HEADER_SIZE
STACK_TOP = 0x90000
MiB = 1 << 20
PAGE = 4096
# Well above the TCG TLB size (256 entries, grown by doubling at most
# once per flush), see the module docstring.
MIN_SWEEP_PAGES = 1024
# Timer mode: IRQ0 remapped to vector 0x20, IDT below the 2 MiB mark, the
# flat code segment QEMU's multiboot loader sets up.
PIT_HZ = 1193182
TIMER_VECTOR = 0x20
IDT_BASE = 0x180000
IDTR_ADDRESS = 0x17FFF0
KERNEL_CS = 0x08


@dataclasses.dataclass(frozen=True)
class DirtyingGuest:
    """Parameters of the guest; ``build()`` gives the kernel bytes."""

    dirty_start: int = 2 * MiB
    dirty_size: int = 16 * MiB
    stride: int = 4096
    delay: int = 64
    fill_size: int = 0
    pages_per_tick: int = 0
    tick_hz: int = 1000

    def validate(self, memory_mb):
        if self.dirty_start < 2 * MiB:
            raise ValueError('dirty range must start above the kernel')
        if self.dirty_size // max(self.stride, PAGE) < MIN_SWEEP_PAGES:
            raise ValueError('the dirty range must span at least %d pages'
                             % MIN_SWEEP_PAGES)
        if self.fill_end > memory_mb * MiB:
            raise ValueError('fill range ends beyond the %d MiB of guest RAM'
                             % memory_mb)
        if self.dirty_end > memory_mb * MiB:
            raise ValueError('dirty range ends at %d MiB, beyond the %d MiB '
                             'of guest RAM' % (self.dirty_end // MiB,
                                               memory_mb))
        if self.pages_per_tick < 0 or not 19 <= self.tick_hz <= 10000:
            raise ValueError('pages_per_tick must be >= 0 and tick_hz '
                             'between 19 and 10000')
        if self.stride < 4 or self.stride % 4 or self.dirty_size < 4:
            raise ValueError('stride and size must be multiples of 4')

    @property
    def fill_end(self):
        return self.dirty_start + self.fill_size

    @property
    def dirty_end(self):
        return self.dirty_start + self.dirty_size

    def booted(self, read_u32):
        """True once the guest runs its dirtying loop.

        ``read_u32(address)`` reads guest memory. The fill pass must be
        over before a migration starts, or the stream carries less than
        the caller expects.
        """
        # The last page the fill writes, else the last the first sweep
        # writes: nonzero once written (fill writes addresses, the loop a
        # counter that is only zero at its very first write).
        if self.fill_size:
            return read_u32(self.fill_end - PAGE) != 0
        return read_u32(self.dirty_end - self.stride) != 0

    def build(self):
        code = _Code()
        code.emit(b'\xfa')                                  # cli
        code.emit(b'\xbc', struct.pack('<I', STACK_TOP))    # mov esp, imm
        code.emit(b'\x31\xc0')                              # xor eax, eax
        self._fill(code)
        if self.pages_per_tick:
            self._timer_loop(code)
        else:
            self._busy_loop(code)
        body = bytes(code.buf)
        load_end = LOAD_ADDRESS + HEADER_SIZE + len(body)
        header = struct.pack(
            '<8I', MULTIBOOT_MAGIC, MULTIBOOT_AOUT_KLUDGE,
            (-(MULTIBOOT_MAGIC + MULTIBOOT_AOUT_KLUDGE)) & 0xFFFFFFFF,
            LOAD_ADDRESS, LOAD_ADDRESS, load_end, load_end, ENTRY_ADDRESS)
        return header + body

    def _fill(self, code):
        if self.fill_size:
            code.emit(b'\xbb', struct.pack('<I', self.dirty_start))
            fill = code.here()
            code.emit(b'\x89\x1b')                          # mov [ebx], ebx
            code.emit(b'\x81\xc3', struct.pack('<I', PAGE))  # add ebx
            code.emit(b'\x81\xfb', struct.pack('<I', self.fill_end))
            code.jump(b'\x72', fill)                       # jb fill

    def _busy_loop(self, code):
        outer = code.here()
        code.emit(b'\xbb', struct.pack('<I', self.dirty_start))  # mov ebx
        inner = code.here()
        code.emit(b'\x89\x03')                              # mov [ebx], eax
        code.emit(b'\x40')                                  # inc eax
        code.emit(b'\xb9', struct.pack('<I', self.delay + 1))   # mov ecx
        spin = code.here()
        code.emit(b'\x49')                                  # dec ecx
        code.jump(b'\x75', spin)                            # jnz spin
        code.emit(b'\x81\xc3', struct.pack('<I', self.stride))  # add ebx
        code.emit(b'\x81\xfb', struct.pack('<I', self.dirty_end))  # cmp ebx
        code.jump(b'\x72', inner)                           # jb inner
        code.jump(b'\xeb', outer)                           # jmp outer

    def _timer_loop(self, code):
        """Write ``pages_per_tick`` pages per PIT tick, halted in between.

        Costs the host almost no CPU, which matters when several QEMUs
        share two cores. Interrupts are enabled only inside ``sti; hlt``
        and the flags are set to the same value just before, so the
        interrupt frame pushed on the stack is the same bytes every time:
        its page is written at every tick, and a change to it could be
        lost (see the module docstring). Without the ``xor`` the pushed
        carry flag changed once per sweep, and QEMU 7.2 TCG left the
        source's last frame out of the stream now and then. The handler
        clobbers only AL, and the loop does not use EAX.
        """
        out = b'\xe6'                                       # out imm8, al
        for port, value in ((0x20, 0x11), (0xA0, 0x11), (0x21, 0x20),
                            (0xA1, 0x28), (0x21, 0x04), (0xA1, 0x02),
                            (0x21, 0x01), (0xA1, 0x01), (0x21, 0xFE),
                            (0xA1, 0xFF), (0x43, 0x34)):
            code.emit(b'\xb0', bytes([value]), out, bytes([port]))
        divisor = PIT_HZ // self.tick_hz
        for value in (divisor & 0xFF, divisor >> 8):
            code.emit(b'\xb0', bytes([value]), out, b'\x40')
        gate = IDT_BASE + TIMER_VECTOR * 8
        gate_low = code.here() + 6
        code.emit(b'\xc7\x05', struct.pack('<II', gate, 0))  # mov [m], imm
        gate_high = code.here() + 6
        code.emit(b'\xc7\x05', struct.pack('<II', gate + 4, 0))
        idt_limit = TIMER_VECTOR * 8 + 7
        code.emit(b'\x66\xc7\x05', struct.pack('<IH', IDTR_ADDRESS, idt_limit))
        code.emit(b'\xc7\x05', struct.pack('<II', IDTR_ADDRESS + 2, IDT_BASE))
        code.emit(b'\x0f\x01\x1d', struct.pack('<I', IDTR_ADDRESS))  # lidt
        code.emit(b'\x31\xf6')                              # xor esi, esi
        code.emit(b'\xbb', struct.pack('<I', self.dirty_start))  # mov ebx
        tick = code.here()
        code.emit(b'\xb9', struct.pack('<I', self.pages_per_tick))  # ecx
        burst = code.here()
        code.emit(b'\x89\x33')                              # mov [ebx], esi
        code.emit(b'\x46')                                  # inc esi
        code.emit(b'\x81\xc3', struct.pack('<I', self.stride))  # add ebx
        code.emit(b'\x81\xfb', struct.pack('<I', self.dirty_end))  # cmp
        code.emit(b'\x72\x05')                              # jb +5
        code.emit(b'\xbb', struct.pack('<I', self.dirty_start))  # mov ebx
        code.emit(b'\x49')                                  # dec ecx
        code.jump(b'\x75', burst)                           # jnz burst
        # Flags fixed before the frame pushes them: CF is the last cmp's,
        # clear when a burst ends at the sweep's wrap, set otherwise.
        code.emit(b'\x31\xc0')                              # xor eax, eax
        code.emit(b'\xfb\xf4\xfa')                          # sti; hlt; cli
        code.jump(b'\xeb', tick)                            # jmp tick
        handler = ENTRY_ADDRESS + code.here()
        code.emit(b'\xb0\x20', out, b'\x20', b'\xcf')         # EOI; iret
        code.patch(gate_low, struct.pack(
            '<I', (handler & 0xFFFF) | (KERNEL_CS << 16)))
        code.patch(gate_high, struct.pack(
            '<I', (handler & 0xFFFF0000) | 0x8E00))

    def write(self, directory):
        """Write the kernel into ``directory``; return its path."""
        path = os.path.join(directory, 'dirtying-guest.bin')
        with open(path, 'wb') as f:
            f.write(self.build())
        return path


class _Code(object):
    """Just enough of an assembler: bytes plus backward short jumps."""

    def __init__(self):
        self.buf = bytearray()

    def here(self):
        return len(self.buf)

    def patch(self, offset, data):
        self.buf[offset:offset + len(data)] = data

    def emit(self, *parts):
        for part in parts:
            self.buf += part

    def jump(self, opcode, target):
        rel = target - (self.here() + 2)
        if not -128 <= rel < 0:
            raise ValueError('short backward jumps only')
        self.buf += opcode + struct.pack('<b', rel)
