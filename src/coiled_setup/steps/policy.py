"""Adding or removing one member of one role in an IAM policy without losing anyone else's bindings."""

from __future__ import annotations

import random
from collections.abc import Callable

from coiled_setup import retry, waiting
from coiled_setup.cloud import Aborted, Binding, InvalidArgument, Policy, Transient
from coiled_setup.errors import UserError
from coiled_setup.needs import holds

MAX_CONFLICTS = 12


def with_member(policy: Policy, role: str, member: str) -> Policy:
    """The same policy plus `member` in the unconditional binding of `role`; conditions are kept as they are."""
    bindings = [Binding(b.role, list(b.members), b.condition) for b in policy.bindings]
    for b in bindings:
        if b.role == role and b.condition is None:
            b.members.append(member)
            break
    else:
        bindings.append(Binding(role, [member]))
    # Version 3 keeps conditional bindings intact; a version-1 write would drop them.
    return Policy(3, policy.etag, bindings)


def without(policy: Policy, role: str, gone: Callable[[str], bool]) -> Policy | None:
    """The same policy without the members `gone` picks from the unconditional binding of `role`, or None when
    there is none; conditional bindings, other roles and other members are kept as they are."""
    bindings, dropped = [], False
    for b in policy.bindings:
        members = list(b.members)
        if b.role == role and b.condition is None:
            kept = [m for m in members if not gone(m)]
            dropped = dropped or len(kept) != len(members)
            members = kept
        if members:
            bindings.append(Binding(b.role, members, b.condition))
    return Policy(3, policy.etag, bindings) if dropped else None


def ensure_member(get: Callable[[], Policy], put: Callable[[Policy], Policy], role: str, member: str, *,
                  timeout: float, tick=None, on_conflict=None, on_unknown=None) -> bool:
    """Read-modify-write with the etag, the whole cycle retried on a conflict.

    Answers True when it wrote, False when the member was already there. While a just-created
    account is unknown to IAM ("does not exist"), waits with backoff up to `timeout` (`on_unknown` hears each
    such answer).
    """
    return rewrite(get, put, lambda p: None if holds(p, role, member) else with_member(p, role, member),
                   timeout=timeout, tick=tick, on_conflict=on_conflict, member=member, on_unknown=on_unknown)


def ensure_removed(get: Callable[[], Policy], put: Callable[[Policy], Policy], role: str,
                   gone: Callable[[str], bool], *, timeout: float, tick=None, on_conflict=None) -> bool:
    """As ensure_member, taking the members `gone` picks out of the unconditional binding of `role`."""
    return rewrite(get, put, lambda p: without(p, role, gone), timeout=timeout, tick=tick, on_conflict=on_conflict)


def rewrite(get: Callable[[], Policy], put: Callable[[Policy], Policy], change: Callable[[Policy], Policy | None],
            *, timeout: float, tick=None, on_conflict=None, member: str = "", on_unknown=None) -> bool:
    """Reads the policy, writes `change(policy)` with its etag (None: nothing to write), and starts over on a
    conflict. Answers whether it wrote."""
    start = retry.now()
    deadline = start + timeout
    conflicts = transient = 0
    waits = waiting.delays()
    new = None  # a write to try again as it is, with the etag it holds
    while True:
        if new is None:
            new = change(get())
            if new is None:
                return False
        try:
            put(new)
            return True
        except (Transient, Aborted, InvalidArgument) as e:
            # The write is retried here (the adapter does not repeat writes: a policy write needs a fresh etag),
            # not by starting the step over: while a new account propagates this loop may write many times,
            # and each transient error would use up one of the step's few retries. (A write that was made but
            # whose answer was lost shows in the next read.) Transient errors in a row have the retry policy's
            # attempts; the error given up on is marked, so the step is not started over for it.
            transient = transient + 1 if isinstance(e, Transient) else 0
            if isinstance(e, Transient):
                if transient >= retry.current().attempts:
                    retry.mark(e)
                    raise
                retry.sleep(next(waits))
                new = None  # a write whose answer was lost may have been made: read again
                continue
            if isinstance(e, Aborted):
                new = None  # someone else's change: read it, never write over it
                conflicts += 1
                if on_conflict:
                    on_conflict()
                if conflicts > MAX_CONFLICTS:
                    raise UserError(
                        f"The IAM policy kept changing under us ({conflicts} conflicts in a row): "
                        "run again when other changes have settled."
                    ) from None
                retry.sleep(random.uniform(0.05, 0.2) * min(conflicts, 5))
                continue
            if member and "does not exist" in e.message:
                # Nothing was written: the same write, with the etag it holds, is tried again (a change made
                # meanwhile fails it with a conflict, which reads again).
                if on_unknown:
                    on_unknown()
                left = deadline - retry.now()
                if left <= 0:
                    raise
                if tick:
                    tick(waiting.progress(f"waiting for Google to know {member.split(':', 1)[1]}",
                                          retry.now() - start, timeout))
                retry.sleep(min(next(waits), left))
                continue
            raise
