"""Random bytes from the operating system, fetched in blocks: one getrandom call serves hundreds of ids and
nonces (the coordinator needs several per job: ids, receipt nonces, request ids). Same source as
``secrets``; a forked child drops its parent's block, so two processes never hand out the same bytes."""

from __future__ import annotations

import os
import threading

_BLOCK = 4096
_lock = threading.Lock()
_block = b""
_pos = 0


def _forget_block() -> None:
    global _block, _pos
    _block, _pos = b"", 0


os.register_at_fork(after_in_child=_forget_block)


def random_bytes(n: int) -> bytes:
    """n bytes (at most a block) from the OS's cryptographic random source."""
    global _block, _pos
    with _lock:
        if _pos + n > len(_block):
            _block, _pos = os.urandom(max(_BLOCK, n)), 0
        out = _block[_pos : _pos + n]
        _pos += n
    return out


def random_hex(n: int) -> str:
    """2n hex digits: like secrets.token_hex(n)."""
    return random_bytes(n).hex()
