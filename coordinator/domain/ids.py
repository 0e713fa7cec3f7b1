"""Time-ordered ids (UUIDv7, RFC 9562): random uuid4 keys cut batched insert speed about 4x."""

from __future__ import annotations

import os
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_POOL_BYTES = 4096  # random bytes fetched per getrandom call: 512 ids (ids are made per job and receipt)
_pool = b""
_pos = 0


def _forget_pool() -> None:  # a forked child must not hand out its parent's random bits again
    global _pool, _pos
    _pool, _pos = b"", 0


os.register_at_fork(after_in_child=_forget_pool)


def uuid7() -> str:
    """A UUIDv7 string, strictly increasing within this process (a 12-bit counter orders one millisecond)."""
    global _last_ms, _counter, _pool, _pos
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            _counter += 1
            if _counter > 0xFFF:  # counter spent: borrow the next millisecond to stay monotonic
                _last_ms += 1
                _counter = 0
            ms = _last_ms
        else:
            _last_ms = ms
            _counter = 0
        counter = _counter
        if _pos + 8 > len(_pool):
            _pool, _pos = os.urandom(_POOL_BYTES), 0
        rand = int.from_bytes(_pool[_pos : _pos + 8], "big")
        _pos += 8
    value = (ms & 0xFFFFFFFFFFFF) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | (rand & ((1 << 62) - 1))
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
