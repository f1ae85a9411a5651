"""Waiting for Google to catch up: polls with capped exponential backoff and jitter, never fixed sleeps."""

from __future__ import annotations

import random
from collections.abc import Callable

from coiled_setup import retry

FIRST_DELAY_S = 0.1
# The longest sleep between two polls: what is awaited is seen at most this long (plus one round trip)
# after it happens, so under a second.
MAX_DELAY_S = 0.8
FACTOR = 1.6
# With an expected end: the sleep is this share of the time between now and that end, up to SPARSE_MAX_S; polls are
# dense (the backoff above) only near it. Waiting a minute for IAM this way takes about 20 polls rather than 70,
# and if the end comes earlier than expected it is seen at most SPARSE_MAX_S late.
SPARSE_SHARE = 0.25
SPARSE_MAX_S = 4.0


def delays(first: float = FIRST_DELAY_S, cap: float = MAX_DELAY_S, factor: float = FACTOR):
    """0.1, 0.16, 0.26, ... up to `cap`, each with +-20 % jitter so many clients don't poll in step, and never
    more than `cap`."""
    d = first
    while True:
        yield min(cap, d * random.uniform(0.8, 1.2))
        d = min(cap, d * factor)


def progress(what: str, elapsed: float, timeout: float) -> str:
    return f"{what}: {int(elapsed)} s so far, up to {int(timeout)} s"


class TimedOut(Exception):
    pass


def poll(check: Callable[[], object], *, timeout: float, what: str,
         tick: Callable[[str], None] | None = None, cap: float = MAX_DELAY_S, expected: float | None = None):
    """Calls `check` until it answers something truthy; `tick` hears a countdown line between tries.

    `expected`: when (seconds from now) what is awaited is likely to happen, from what this run saw of Google: the
    polls are dense around then and sparser the further from it (SPARSE_SHARE)."""
    start = retry.now()  # the retry policy's clock and sleep, which tests replace
    deadline = start + timeout
    for d in delays(cap=cap):
        result = check()
        if result:
            return result
        now = retry.now()
        left = deadline - now
        if left <= 0:
            raise TimedOut(what)
        if tick:
            tick(progress(what, now - start, timeout))
        if expected is not None:
            d = max(d, min(SPARSE_MAX_S, SPARSE_SHARE * abs(start + expected - now)))
        retry.sleep(min(d, left))
