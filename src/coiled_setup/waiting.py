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
         tick: Callable[[str], None] | None = None, cap: float = MAX_DELAY_S):
    """Calls `check` until it answers something truthy; `tick` hears a countdown line between tries."""
    start = retry.now()  # the retry policy's clock and sleep, which tests replace
    deadline = start + timeout
    for d in delays(cap=cap):
        result = check()
        if result:
            return result
        left = deadline - retry.now()
        if left <= 0:
            raise TimedOut(what)
        if tick:
            tick(progress(what, retry.now() - start, timeout))
        retry.sleep(min(d, left))
