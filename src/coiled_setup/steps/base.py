"""What every step is, and the run record through which steps hand facts to later ones.

A step reads what exists (`observe`, run concurrently with the other steps' observations, so it writes only
into the step itself), says what it would change (`plan`, without side effects) and makes that change
(`apply`). What a later step needs from an earlier one goes through the run record only: a step lists the
fields it `publishes` (in its plan's `publish`, or set by its apply) and the fields it `reads`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the clients load lazily: a type hint must not import them
    from coiled_setup.cloud import Google
    from coiled_setup.coiled_api import Coiled
    from coiled_setup.journal import Journal
    from coiled_setup.options import Options
    from coiled_setup.ui import Ui

NOTHING = "nothing"
CREATE = "create"
UPDATE = "update"
CHECK = "check"


@dataclass
class Change:
    action: str  # nothing / create / update / check
    detail: str
    # Run-record fields this plan settles for the later steps' plans (the engine sets them, in step order).
    publish: dict = field(default_factory=dict)

    @property
    def writes(self) -> bool:
        return self.action in (CREATE, UPDATE)


@dataclass
class Run:
    """What the steps share: inputs, the Google and Coiled handles, and what earlier steps produced."""

    opts: Options
    google: Google
    journal: Journal
    ui: Ui
    coiled: Coiled | None = None
    # Which APIs are on: the preflight's answers, brought up to date by the APIs step's apply.
    services: dict[str, bool] = field(default_factory=dict)
    # What Coiled holds now for this project ({client_email, private_key_id}), read before the steps.
    coiled_credentials: dict = field(default_factory=dict)
    keyfile: dict | None = None  # in memory only, never logged
    key_id: str | None = None  # the key Coiled gets; None in a plan: a new one
    key_path: str | None = None
    fresh_account: bool = False
    instance_email: str | None = None
    # How long Google took this run to know a just-created account (retry.now() seconds), when a binding had to
    # wait for it, and when that binding was written: what the wait for the permissions expects.
    account_created: float | None = None
    propagation_s: float | None = None
    bound_at: float | None = None
    # Domain restricted sharing would refuse Coiled's log sink its grant, and the operator allowed lifting it then.
    lift_log_sink_policy: bool = False
    # Whether a step planned before the one being planned writes (the engine sets it before each plan).
    earlier_writes: bool = False
    # When steps apply together (the engine sets both): `reach("account.exists")` tells the steps that start on
    # that point of a step's apply, and `wait_for("binding")` waits, within an apply, for an earlier step to end.
    reach: Callable[[str], None] = field(default=lambda name: None, repr=False)
    wait_for: Callable[[str], None] = field(default=lambda key: None, repr=False)


@dataclass
class LocalFile:
    """A file a step's plan writes on this machine: checked writable before the first change."""

    path: Path
    what: str  # "The key file"
    fix: str  # what to do when it cannot be written
    private: bool = False  # a secret: its directory should not be readable by others


class Step:
    key = ""
    title = ""
    optional = False  # may be skipped after a failure
    # Keys of the steps this one needs: when one of them is skipped, this one is skipped with it.
    after: tuple[str, ...] = ()
    # The operator's permissions its observe and apply use (the preflight tests their union).
    permissions: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()  # run-record fields earlier steps publish
    publishes: tuple[str, ...] = ()
    # When independent steps apply together: the earlier steps this one also waits for (besides those of `after`
    # and those whose fields it reads), and whether it stands alone (after every earlier step, before every later).
    follows: tuple[str, ...] = ()
    alone = False
    # Earlier steps this one starts on a point of, rather than on their end: {"account": "exists"} starts it once
    # the account step has reached "exists" (run.reach); "start" is reached when a step starts.
    early: dict[str, str] = {}
    # Its observation uses the preflight's answers (run.services): observed once they are in, not beside the
    # preflight's calls.
    after_preflight = False

    def observe(self, run: Run) -> None:
        """Reads what exists; changes nothing."""

    def plan(self, run: Run) -> Change:
        raise NotImplementedError

    def apply(self, run: Run) -> str:
        """Makes the planned change; answers a short outcome."""
        raise NotImplementedError

    def adopt(self, run: Run) -> None:
        """When nothing is to change: hands what exists to the later steps."""

    def on_skip(self, run: Run) -> None:
        """When skipped: takes back what the plan promised the later steps."""

    def local_files(self, run: Run) -> list[LocalFile]:
        """The files on this machine its plan writes."""
        return []
