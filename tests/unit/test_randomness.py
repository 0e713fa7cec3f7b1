"""Random bytes fetched from the OS in blocks: never repeated, in this process or in a forked child."""

from __future__ import annotations

import os

from aitbc.randomness import random_bytes, random_hex

from coordinator.domain.ids import uuid7


def test_draws_never_repeat_across_blocks() -> None:
    draws = [random_bytes(16) for _ in range(2000)]  # about eight blocks
    assert len(set(draws)) == len(draws) and all(len(d) == 16 for d in draws)
    assert len(random_bytes(10_000)) == 10_000  # larger than a block
    hex_ = random_hex(16)
    assert len(hex_) == 32 and int(hex_, 16) >= 0


def test_a_forked_child_does_not_hand_out_its_parents_bytes() -> None:
    random_bytes(1)  # the parent holds a block now
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what it draws next, the parent draws too unless the block was dropped
        os.write(write_end, random_bytes(32) + uuid7().encode())
        os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 200)
    os.waitpid(pid, 0)
    os.close(read_end)
    parent = random_bytes(32)
    assert child[:32] != parent
    assert len(child) == 32 + 36
