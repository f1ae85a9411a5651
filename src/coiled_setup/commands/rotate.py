"""`coiled-setup rotate-key`: a new key for Coiled's account, handed over, and only then the old one deleted."""

from __future__ import annotations

import os
from pathlib import Path

from coiled_setup import context, keyfile
from coiled_setup import steps as registry
from coiled_setup.commands.common import Session
from coiled_setup.errors import OK, BadInput, UserError
from coiled_setup.journal import Journal
from coiled_setup.lock import ProjectLock
from coiled_setup.options import GAR_REGIONS, REGIONS, SA_EMAIL_RE, Options, check_project, check_wait_timeout
from coiled_setup.remedies import SANDBOX_VAR, command
from coiled_setup.steps.base import Run
from coiled_setup.ui import Ui


class Rotation(Session):
    idle = "Nothing to change: Coiled keeps its key."
    def __init__(self, opts: Options, ui: Ui):
        super().__init__("rotate-key", opts, ui)
        self.opts: Options = opts

    def drive(self) -> int:
        return super().drive(self.execute)

    def resolve(self) -> None:
        o = self.opts
        if o.max_age is not None and not (0 <= o.max_age < 100000):
            raise BadInput(f"--max-age {o.max_age:g} is not a number of days: use for example 90.")
        check_wait_timeout(o.wait_timeout)
        o.project = o.project or context.project_from_environment() or ""
        if not o.project:
            raise BadInput("No project given: pass --project PROJECT_ID or set GOOGLE_CLOUD_PROJECT.")
        check_project(o.project)

    def settle(self, journal: Journal, options: dict) -> dict:
        """The account, key file and registry of this setup: flags, else what Coiled holds, else the journal."""
        o = self.opts
        creds = options.get("gcp_service_creds_dict") or {}
        held = {k: creds.get(k) for k in ("client_email", "private_key_id") if creds.get(k)}
        m = SA_EMAIL_RE.match(held.get("client_email") or "")
        if "service_account" not in o.explicit:
            if not m or m.group(3) != o.project:
                raise UserError(f"Coiled's workspace {o.workspace} holds no key of an account in project {o.project}: "
                                f"run {command('gcp')} --project {o.project} first.")
            o.service_account = held["client_email"]
        recorded = journal.settings()
        if o.key_file is None and journal.get("account") == o.account_email and journal.get("key_file"):
            path = Path(journal.get("key_file"))
            try:
                mine = path.exists() and keyfile.read(path)["client_email"] == o.account_email
            except UserError:
                mine = False
            o.key_file = path if mine else None
        o.gar = recorded["gar"] if isinstance(recorded.get("gar"), bool) else \
            (options.get("registry") or {}).get("type") == "gar"
        region = recorded.get("region") or options.get("gcp_region_name")
        if region in REGIONS and (not o.gar or region in GAR_REGIONS):
            o.region = region
        return held

    def execute(self) -> int:
        o, ui = self.opts, self.ui
        self.resolve()

        g, c = self.connect(None)  # rotation is about the key Coiled holds
        journal = Journal(o.project)
        self.run = Run(opts=o, google=g, journal=journal, ui=ui, coiled=c)
        held = self.settle(journal, (c.backend_options(keep=True) or {}).get("options") or {})
        if not o.dry_run:
            self.lock = ProjectLock(o.project)
            self.lock.acquire()
        steps = registry.build(o, registry.ROTATION)
        self.check_permissions(g, steps)
        self.run.coiled_credentials = held
        ui.info(f"Project [bold]{o.project}[/], account {o.account_email}, Coiled workspace [bold]{o.workspace}[/]"
                + (" (a rehearsal against the local sandbox: nothing leaves this machine)"
                   if os.environ.get(SANDBOX_VAR) else ""))
        if not self.plan_and_apply(steps):
            return OK
        self.engine.summary()
        if self.run.key_path:
            ui.info(f"The new key of {o.account_email} is in {self.run.key_path} (mode 0600). Keep it private.")
        return OK


def run(opts: Options) -> int:
    ui = Ui(interactive=opts.interactive, output=opts.output)
    return Rotation(opts, ui).drive()
