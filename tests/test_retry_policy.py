"""The retry policy and the typed errors, without a sandbox: how many calls, how long, and what is marked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from coiled_setup import cloud, retry

SRC = Path(cloud.__file__).parent


class Clock:
    """A clock that only moves when slept on."""

    def __init__(self):
        self.t = 0.0
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


def policy(clock: Clock, **kw) -> retry.Policy:
    return retry.Policy(clock=clock.now, sleep=clock.sleep, **kw)


def failing(n: int, error=lambda: cloud.error("UNAVAILABLE", "busy")):
    """A call that fails `n` times, then answers "ok"; counts its calls."""
    def call():
        call.calls += 1
        if call.calls <= n:
            raise error()
        return "ok"
    call.calls = 0
    return call


def transient(e) -> bool:
    return isinstance(e, cloud.Transient)


def test_a_call_that_keeps_failing_is_made_attempts_times_within_the_budget_and_marked():
    clock = Clock()
    call = failing(100)
    with pytest.raises(cloud.Transient) as caught:
        policy(clock).call(call, transient)
    assert call.calls == retry.Policy().attempts == 8
    assert retry.retried(caught.value)
    assert sum(clock.slept) <= retry.Policy().budget_s
    assert max(clock.slept) <= retry.Policy().cap_s


def test_a_call_that_recovers_answers_and_other_errors_are_not_retried():
    clock = Clock()
    call = failing(3)
    assert policy(clock).call(call, transient) == "ok" and call.calls == 4
    refused = failing(1, lambda: cloud.error("PERMISSION_DENIED", "no"))
    with pytest.raises(cloud.PermissionDenied) as caught:
        policy(clock).call(refused, transient)
    assert refused.calls == 1 and not retry.retried(caught.value)


def test_the_budget_stops_a_policy_with_many_attempts():
    clock = Clock()
    call = failing(100)
    with pytest.raises(cloud.Transient):
        policy(clock, attempts=100, budget_s=3.0).call(call, transient)
    assert sum(clock.slept) <= 3.0 and 4 <= call.calls < 100


def test_an_unbounded_error_is_retried_past_the_attempts_until_its_caller_gives_up():
    clock = Clock()
    call = failing(20)
    assert policy(clock).call(call, transient, unbounded=lambda e: True) == "ok" and call.calls == 21


def test_the_policy_in_force_is_the_one_put_in_and_only_inside():
    clock = Clock()
    quick = policy(clock)
    with retry.use(quick):
        assert retry.current() is quick
        retry.sleep(0.5)
        assert retry.now() == 0.5
    assert retry.current() is not quick


@pytest.mark.parametrize("code, cls", [
    ("NOT_FOUND", cloud.NotFound), ("ALREADY_EXISTS", cloud.AlreadyExists), ("ABORTED", cloud.Aborted),
    ("FAILED_PRECONDITION", cloud.FailedPrecondition), ("PERMISSION_DENIED", cloud.PermissionDenied),
    ("INVALID_ARGUMENT", cloud.InvalidArgument), ("UNAUTHENTICATED", cloud.Unauthenticated),
    ("UNAVAILABLE", cloud.Transient), ("DEADLINE_EXCEEDED", cloud.Transient), ("RESOURCE_EXHAUSTED", cloud.Transient),
    ("INTERNAL", cloud.Transient), ("UNKNOWN", cloud.Transient), ("OUT_OF_RANGE", cloud.CloudError),
])
def test_each_google_code_has_its_class_and_keeps_what_the_messages_need(code, cls):
    e = cloud.error(code, "text", reason="R", metadata={"permission": "p"}, violations=["v"])
    assert type(e) is cls and isinstance(e, cloud.CloudError)
    assert (e.code, e.message, e.reason, e.permission, e.violations) == (code, "text", "R", "p", ["v"])
    assert e.transient == (cls is cloud.Transient)


def test_an_unreachable_google_is_not_transient_so_nothing_retries_it_again():
    e = cloud.unreachable("localhost:1", 31.0)
    assert isinstance(e, cloud.Unreachable) and not e.transient and not e.no_answer


# Google's status codes as strings, and HTTP statuses compared: only the adapter and Coiled's client read them
# (remedies.py words its messages with e.code, never branches on it).
CODES = re.compile(r'"(NOT_FOUND|ALREADY_EXISTS|ABORTED|FAILED_PRECONDITION|PERMISSION_DENIED|INVALID_ARGUMENT'
                   r'|UNAUTHENTICATED|UNAVAILABLE|DEADLINE_EXCEEDED|RESOURCE_EXHAUSTED)"'
                   r'|\.code\s*(==|!=|in|not in)\s*["(]|\.status\s*(==|!=|in|not in)\s*\(?\d')


def test_no_code_outside_the_adapter_and_the_coiled_client_compares_error_codes():
    found = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel in ("cloud.py", "coiled_api.py") or rel.startswith("sandbox/"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if CODES.search(line):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert found == []
