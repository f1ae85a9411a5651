"""What every step is, and what a run shares between steps."""

from __future__ import annotations

from dataclasses import dataclass, field

NOTHING = "nothing"
CREATE = "create"
UPDATE = "update"
CHECK = "check"


@dataclass
class Change:
    action: str  # nothing / create / update / check
    detail: str

    @property
    def writes(self) -> bool:
        return self.action in (CREATE, UPDATE)


@dataclass
class Run:
    """What the steps share: inputs, the Google and Coiled handles, and what earlier steps produced."""

    opts: object
    google: object
    journal: object
    ui: object
    coiled: object | None = None
    services: dict[str, bool] = field(default_factory=dict)
    keyfile: dict | None = None  # in memory only, never logged
    key_id: str | None = None
    key_path: str | None = None
    fresh_account: bool = False
    instance_email: str | None = None
    coiled_view: dict = field(default_factory=dict)


class Step:
    key = ""
    title = ""
    optional = False  # may be skipped after a failure
    # Keys of the steps this one needs: when one of them is skipped, this one is skipped with it.
    after: tuple[str, ...] = ()

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
