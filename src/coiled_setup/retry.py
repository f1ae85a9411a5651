"""The one retry policy: how often and how long a transient error is retried, and the clock and sleep every wait
of the product uses.

Each call is retried in one place only: Google's reads by the Google adapter (cloud.Google), Coiled's calls by
its client (coiled_api.Coiled). An error that place gave up on is marked `retried`, and nothing above retries
it again. Writes that must not be repeated blindly are retried above the adapter after a fresh read (the
engine's step retry, the policy loop of steps.policy), and only while their error is not marked.

Tests put in a policy of their own with `use()` (a fast sleep, fewer attempts) rather than patching `time`.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Policy:
    # 8 calls over about 4.5 s (0.1, 0.2, 0.4, 0.8, then 1 s apart): a verdict within 10 s when a read keeps
    # failing, and a fault rate of one call in five still leaves one read in 400,000 failing.
    attempts: int = 8  # calls of one method in all, the first included
    first_s: float = 0.1  # the first delay; each next one doubles, jittered by +-20 %
    cap_s: float = 1.0  # no delay is longer
    # The most time slept between the calls of one method (counted in delays, not on the clock, so that a test's
    # quick sleep makes the same calls as a real run); above the 8 delays' most (4.8 s), so only a policy with
    # more attempts meets it.
    budget_s: float = 5.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def delays(self, first: float | None = None, cap: float | None = None) -> Iterator[float]:
        d = self.first_s if first is None else first
        cap = self.cap_s if cap is None else cap
        while True:
            yield min(cap, d * random.uniform(0.8, 1.2))
            d = min(cap, d * 2)

    def call(self, fn: Callable[[], object], retryable: Callable[[BaseException], bool], *,
             unbounded: Callable[[BaseException], bool] = lambda e: False, on_retry=None):
        """fn() until it answers; an error `retryable` says is transient is retried up to `attempts` calls and
        `budget_s` seconds of delays. Errors `unbounded` says so are retried without those limits (whatever raises
        them bounds them itself, e.g. a service that does not answer, given up on after a while). The error given
        up on is marked `retried`."""
        delays = self.delays()
        attempt = 0
        slept = 0.0
        while True:
            attempt += 1
            try:
                return fn()
            except Exception as e:
                if not retryable(e):
                    raise
                delay = next(delays)
                if not unbounded(e):
                    if attempt >= self.attempts or slept + delay > self.budget_s:
                        mark(e)
                        raise
                    slept += delay
                if on_retry is not None:
                    on_retry(e, attempt)
            self.sleep(delay)


def mark(e: BaseException) -> BaseException:
    """Marks `e` as given up on by the layer that retries its call: nothing above retries it."""
    e.retried = True  # type: ignore[attr-defined]
    return e


def retried(e: BaseException) -> bool:
    return bool(getattr(e, "retried", False))


_current = Policy()


def current() -> Policy:
    """The policy in force (read at each call, so a policy put in by a test applies to clients made before)."""
    return _current


def sleep(seconds: float) -> None:
    _current.sleep(seconds)


def now() -> float:
    return _current.clock()


@contextlib.contextmanager
def use(policy: Policy):
    """`policy` in force for the calls made inside (all threads: the calls of one run go out concurrently)."""
    global _current
    before, _current = _current, policy
    try:
        yield policy
    finally:
        _current = before
