"""What the chaos tests (tests/integration/test_network_chaos.py, test_miner_sdk_poll_chaos.py,
tests/store/test_postgres_chaos.py) do alike: a link cut or stalled by its relay, the bounded wait for every job
to end once the network heals, and the verdict. Each failure names the run's seed, so that it can be replayed.

The relays are tests.tcp_relay's (or a subclass): `cut(how)` returns the links it cut, `stall()` stops every
byte, `heal()` lets them flow again. Random choices are made in the order the tests always made them, so a seed
replays the same decisions it did before these helpers existed.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol


class Cuttable(Protocol):
    def cut(self, how: str) -> int: ...

    def stall(self) -> None: ...

    def heal(self) -> None: ...


def cut(relay: Cuttable, rng: random.Random, actions: Counter, hows: Sequence[str]) -> None:
    """Cut every link of the relay one of these ways (counted as cut-HOW, and the links in links-cut)."""
    how = rng.choice(hows)
    actions[f"cut-{how}"] += 1
    actions["links-cut"] += relay.cut(how)


async def stall(
    relay: Cuttable, rng: random.Random, actions: Counter, thens: Sequence[str], seconds: tuple[float, float]
) -> None:
    """Stall the relay's links for a while (uniform in seconds), then heal them or first cut them (then: "heal"
    or a way to cut); counted as stall-THEN."""
    then = rng.choice(thens)
    actions[f"stall-{then}"] += 1
    relay.stall()
    await asyncio.sleep(rng.uniform(*seconds))
    if then != "heal":
        relay.cut(then)
    relay.heal()


async def _value(x: Any) -> Any:
    return await x if inspect.isawaitable(x) else x


async def until_terminal(
    stuck: Callable[[], Any],
    *,
    seed: int,
    bound_s: float,
    actions: Counter,
    detail: Callable[[list[tuple]], Any] = lambda rows: "",
) -> float:
    """Wait until `stuck()` (sync or async: the rows of the jobs not terminal yet, job_id first) is empty; after
    bound_s, fail naming the seed, how many jobs are stuck, the first five, `detail(rows)` and the chaos's
    actions. Returns the seconds it took."""
    started = time.monotonic()
    while rows := list(await _value(stuck())):
        if time.monotonic() - started > bound_s:
            more = await _value(detail(rows))
            raise AssertionError(
                f"seed {seed}: {len(rows)} jobs not terminal {bound_s:g} s after the network healed: "
                f"{rows[:5]}{'; ' + more if more else ''}; actions {dict(actions)}"
            )
        await asyncio.sleep(0.1)
    return time.monotonic() - started


def assert_no_problems(seed: int, problems: list[str]) -> None:
    """The verdict: no problem found (the first 40 shown, with the seed to replay the run)."""
    assert not problems, f"seed {seed}: {len(problems)} problems:\n" + "\n".join(problems[:40])
