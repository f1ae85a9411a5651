"""`coiled-setup teardown`: remove what coiled-setup created for Coiled in a project, and nothing else."""

from __future__ import annotations

import os

from coiled_setup import context
from coiled_setup import steps as registry
from coiled_setup.commands.common import Session
from coiled_setup.errors import OK, BadInput
from coiled_setup.journal import Journal
from coiled_setup.lock import ProjectLock
from coiled_setup.options import (
    GAR_REGIONS,
    REGIONS,
    ROLE_ID_RE,
    SA_EMAIL_RE,
    Options,
    check_project,
    check_wait_timeout,
    default_instance_email,
)
from coiled_setup.remedies import SANDBOX_VAR
from coiled_setup.steps.base import Run
from coiled_setup.ui import Ui


class Teardown(Session):
    idle = "Nothing to remove: nothing coiled-setup created is left in use."
    def __init__(self, opts: Options, ui: Ui):
        super().__init__("teardown", opts, ui)
        self.opts: Options = opts

    def drive(self) -> int:
        return super().drive(self.execute)

    def settle(self, journal: Journal, options: dict) -> None:
        """What this setup is: flags, else what the journal recorded, else what Coiled holds, else the defaults."""
        o = self.opts
        recorded = journal.settings()
        creds = options.get("gcp_service_creds_dict") or {}
        m = SA_EMAIL_RE.match(creds.get("client_email") or "")
        if "service_account" not in o.explicit:
            coiled_account = creds["client_email"] if m and m.group(3) == o.project else None
            mine = journal.get("account")
            o.service_account = coiled_account or (mine if SA_EMAIL_RE.match(mine or "") else None) \
                or o.service_account
        if "role_id" not in o.explicit and isinstance(recorded.get("role_id"), str) \
                and ROLE_ID_RE.match(recorded["role_id"]):
            o.role_id = recorded["role_id"]
        if isinstance(recorded.get("gar"), bool):
            o.gar = recorded["gar"]
        elif options.get("registry"):
            o.gar = (options.get("registry") or {}).get("type") == "gar"
        region = recorded.get("region") or options.get("gcp_region_name")
        if region in REGIONS and region in GAR_REGIONS:
            o.region = region
        # Every registry region gcp recorded, and any whose repository coiled-setup created: each loses the grant
        # (and, with --delete-repository, the repository it created).
        made = [n.split("/")[3] for n in journal.created_repositories()
                if n.startswith(f"projects/{o.project}/locations/") and n.count("/") == 5]
        listed = recorded.get("registry_regions") if isinstance(recorded.get("registry_regions"), list) else []
        o.registry_regions = tuple(r for r in dict.fromkeys([*listed, *made])
                                   if isinstance(r, str) and r in GAR_REGIONS)
        instance = default_instance_email(o.project)
        o.create_instance_service_account = instance in ((journal.get("created") or {}).get("instance_account"),
                                                         options.get("instance_service_account"))

    def execute(self) -> int:
        o, ui = self.opts, self.ui
        check_wait_timeout(o.wait_timeout)
        o.project = o.project or context.project_from_environment() or ""
        if not o.project:
            raise BadInput("No project given: pass --project PROJECT_ID or set GOOGLE_CLOUD_PROJECT.")
        check_project(o.project)
        g, c = self.connect("--no-coiled")
        journal = Journal(o.project)
        options = ((c.backend_options(keep=True) or {}).get("options") or {}) if c is not None else {}
        self.settle(journal, options)
        creds = options.get("gcp_service_creds_dict") or {}
        self.run = Run(opts=o, google=g, journal=journal, ui=ui, coiled=c,
                       coiled_credentials={k: creds[k] for k in ("client_email", "private_key_id") if creds.get(k)})
        if not o.dry_run:
            self.lock = ProjectLock(o.project)
            self.lock.acquire()
        steps = registry.build(o, registry.TEARDOWN)
        self.check_permissions(g, steps)
        ui.info(f"Project [bold]{o.project}[/], account {o.account_email}"
                + (f", Coiled workspace [bold]{o.workspace}[/]" if c else "")
                + (" (a rehearsal against the local sandbox: nothing leaves this machine)"
                   if os.environ.get(SANDBOX_VAR) else ""))
        if not self.plan_and_apply(steps):
            return OK
        self.engine.summary()
        ui.info("Left on purpose: the enabled APIs (other workloads may use them)"
                + ("" if o.delete_repository or not o.gar else
                   f", the {'repositories' if len(o.repositories) > 1 else 'repository'} {', '.join(o.repositories)} "
                   f"and {'their' if len(o.repositories) > 1 else 'its'} images (--delete-repository removes "
                   f"{'them' if len(o.repositories) > 1 else 'it'})")
                + ", and your dask config file.")
        return OK


def run(opts: Options) -> int:
    ui = Ui(interactive=opts.interactive, output=opts.output)
    return Teardown(opts, ui).drive()
