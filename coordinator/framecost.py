"""What a frame would cost to decode, told before decoding it: its msgpack elements, counted up to a budget.

Decoding allocates a Python object per msgpack element: a frame of nested empty
arrays is one element per byte, so half a megabyte of them cost 0.17 s and tens
of megabytes to decode, and a peer could keep the loop busy with them.  An
honest message is a few hundred elements whatever its size (arrays travel as
binary strings), so the elements are counted first, by reading only the type
bytes and length headers and skipping every payload: at most `budget` steps of
this loop, whatever the frame holds.  A truncated or malformed frame is left for
the decoder to refuse.
"""

from __future__ import annotations

import struct

ELEMENT_BUDGET = 4096  # a Task of 1,024 shards (protocol.MAX_SHARDS sizes) is ~1,100; a Result a few hundred

# type byte -> (bytes of the length header, or of the payload when fixed; kind)
_FIXED = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2,
          0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}
_SIZED = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4, 0xC7: 1, 0xC8: 2, 0xC9: 4}  # bin, str, ext
_EXT = {0xC7, 0xC8, 0xC9}  # one more byte: the ext type
_ARRAYS = {0xDC: 2, 0xDD: 4}
_MAPS = {0xDE: 2, 0xDF: 4}
_UNSIGNED = {1: ">B", 2: ">H", 4: ">I"}


def within_budget(frame: bytes | memoryview, budget: int = ELEMENT_BUDGET) -> bool:
    """Whether `frame` holds at most `budget` msgpack elements (False as soon as the count passes it)."""
    view = memoryview(frame)
    pos, pending, end = 0, 1, len(view)  # pending: elements still to read
    for _ in range(budget):
        if pending == 0 or pos >= end:
            return True
        pending -= 1
        b = view[pos]
        pos += 1
        if b <= 0x7F or b >= 0xE0:
            continue
        if 0x80 <= b <= 0x8F:
            pending += 2 * (b & 0x0F)
        elif 0x90 <= b <= 0x9F:
            pending += b & 0x0F
        elif 0xA0 <= b <= 0xBF:
            pos += b & 0x1F
        elif b in _FIXED:
            pos += _FIXED[b]
        elif b in _SIZED or b in _ARRAYS or b in _MAPS:
            width = _SIZED.get(b) or _ARRAYS.get(b) or _MAPS[b]
            if pos + width > end:
                return True  # truncated: the decoder says so
            (n,) = struct.unpack_from(_UNSIGNED[width], view, pos)
            pos += width
            if b in _SIZED:
                pos += n + (b in _EXT)
            else:
                pending += n if b in _ARRAYS else 2 * n
        # 0xC1 (never used) and anything else: the decoder refuses it
    return pending == 0 or pos >= end
