"""`coiled-setup gcp`: context and validation, preflight, plan, then apply step by step."""

from __future__ import annotations

import os
from pathlib import Path

from coiled_setup import context, keyfile, log_sink, paths
from coiled_setup import steps as registry
from coiled_setup.cloud import CloudError, Google, Transient, Unauthenticated, Unreachable
from coiled_setup.commands.common import Session
from coiled_setup.concurrency import run_all, start
from coiled_setup.engine import Engine
from coiled_setup.errors import MISSING_PERMISSION, OK, ORG_POLICY, BadInput, UserError
from coiled_setup.in_place import InPlace, check_instance_differs, keep, read
from coiled_setup.journal import Journal
from coiled_setup.lock import ProjectLock
from coiled_setup.needs import CORE_SERVICES
from coiled_setup.needs import services as services_needed
from coiled_setup.options import (
    DEFAULT_ACCOUNT_ID,
    OPEN_CIDR,
    Options,
    account_error,
    cidr_error,
    default_instance_email,
    project_error,
    read_network,
    validate,
)
from coiled_setup.remedies import SANDBOX_VAR, explain, missing_permissions_sentence, vpc_refusal
from coiled_setup.steps.base import Run
from coiled_setup.ui import Ui
from coiled_setup.wording import count


def print_operator_roles(project: str | None, *, gar: bool, listing: bool) -> int:
    """The predefined roles that grant the operator what a run needs, and the commands that grant them."""
    from coiled_setup.remedies import granting_role

    o = Options(project=project or "PROJECT_ID", gar=gar, interactive=listing)
    by_role: dict[str, list[str]] = {}
    for p in registry.operator_permissions(o):
        by_role.setdefault(granting_role(p), []).append(p)
    print(f"Your account needs these roles in project {o.project} (or roles/owner), for "
          f"{count(len(registry.operator_permissions(o)), 'permission')}:")
    for role, perms in by_role.items():
        print(f"  {role}: {', '.join(perms)}")
    print("A project owner grants them with:")
    for role in by_role:
        print(f"  gcloud projects add-iam-policy-binding {o.project} --member=user:YOU@EXAMPLE.COM --role={role}")
    return OK


def _prompt_rule(rule):
    """A shared validation rule as questionary's validate=: True, or the sentence shown under the prompt."""
    return lambda text: rule(text.strip()) or True


class Wizard(Session):
    clients = ("projects", "usage", "iam", "orgpolicy", "registry", "quotas")  # the preflight's and observations'
    def __init__(self, opts: Options, ui: Ui, export: tuple[str, Path] | None = None, terraform_key: bool = False):
        super().__init__("gcp", opts, ui)
        self.opts: Options = opts
        self.export, self.terraform_key = export, terraform_key
        self.run: Run | None = None
        self.engine: Engine | None = None
        self.lock: ProjectLock | None = None
        self.lift_log_sink = False  # domain restricted sharing found, and --allow-log-sink-exception given
        self.accounts = None  # the project's accounts for the account question, being listed meanwhile
        self.services: dict[str, bool] = {}  # which APIs are on, as the preflight read them

    def drive(self) -> int:
        return super().drive(self.execute)

    def read_coiled_early(self, c) -> None:
        # What is in place, and the Coiled step's own observation.
        from coiled_setup.coiled_api import CoiledError

        try:
            run_all([lambda: c.backend_options(keep=True), lambda: c.get_settings(keep=True),
                     lambda: c.get_regions(keep=True), lambda: c.get_global(keep=True)])
        except CoiledError:
            pass  # read again when used, and told then

    # -- 0. context and validation ----------------------------------------------------------------
    def resolve(self) -> None:
        o = self.opts
        if not o.project:
            o.project = context.project_from_environment() or ""
        if not o.project and o.interactive:
            o.project = self.ui.text("Google Cloud project id:", validate=_prompt_rule(lambda t: project_error(t, "")))
            o.project = o.project.strip()
        if not o.project:
            raise BadInput("No project given: pass --project PROJECT_ID or set GOOGLE_CLOUD_PROJECT.")
        self.network_only()
        # Coiled's account is not known yet unless given: the instance account is compared with it later.
        validate(o, accounts_known="service_account" in o.explicit)
        if o.key_file is not None and o.key_file.exists():
            data = keyfile.read(o.key_file)
            if data["project_id"] != o.project:
                raise BadInput(f"--key-file {str(o.key_file)!r} belongs to project {data['project_id']}, not "
                               f"{o.project}: pass the key of an account in {o.project}.")
            if "service_account" in o.explicit and data["client_email"] != o.account_email:
                raise BadInput(f"--key-file {str(o.key_file)!r} is a key of {data['client_email']}, not "
                               f"{o.account_email}: pass a matching --service-account or another key file.")
            o.service_account = data["client_email"]
            o.explicit.add("service_account")

    def network_only(self) -> None:
        """The network as Google's firewall reads it (10.1.2.3/24 is 10.1.2.0/24): said, then used."""
        net, note = read_network(self.opts.firewall_cidr)
        if note:
            self.ui.warn(note)
            self.opts.firewall_cidr = net

    def refuse_privileged_account(self, g: Google) -> None:
        """Coiled gets the account's key: never the operator's own, nor one that can change IAM in the project."""
        o = self.opts
        if o.allow_privileged_key:
            return
        email = o.account_email
        what = (f"--key-file {str(o.key_file)!r} is a key of {email}" if o.key_file is not None and o.key_file.exists()
                else f"Service account {email}")
        # A re-run keeps the account Coiled holds: only --service-account moves it to another one.
        without_key = " without --key-file" if o.key_file is not None else ""
        if email.split("@", 1)[0] == DEFAULT_ACCOUNT_ID:
            dedicated = (f"pass --service-account with another account id{without_key} (created with only the "
                         "Coiled role)")
        else:
            dedicated = (f"pass --service-account {DEFAULT_ACCOUNT_ID}{without_key} (or another account without such "
                         f"roles) to use {DEFAULT_ACCOUNT_ID}@{o.project}.iam.gserviceaccount.com with only the "
                         "Coiled role")
        fix = f"so give Coiled a dedicated account: {dedicated}, or pass --allow-privileged-key if you mean it."
        if g.principal and email == g.principal:
            raise BadInput(f"{what}, the account running coiled-setup: Coiled would get all of your permissions, {fix}")
        roles = keyfile.privileged_roles(g.get_policy(o.project), email)
        if roles:
            raise BadInput(f"{what}, which holds {', '.join(roles)} in project {o.project}: Coiled needs only the "
                           f"custom role, {fix}")

    # -- 1. preflight ------------------------------------------------------------------------------
    def preflight(self, g: Google) -> dict[str, bool]:
        o = self.opts
        perms = registry.operator_permissions(o)

        def attempt(fn):
            """The answer or the error: preflight reports them together (reads retry transient errors themselves)."""
            def call():
                try:
                    return fn(), None
                except CloudError as e:
                    return None, e
            return call

        services = [*CORE_SERVICES, *services_needed(o.gar, o.bigquery)]
        (project, perr), (held, terr), (states, serr) = run_all([
            attempt(lambda: g.get_project(o.project)), attempt(lambda: g.test_permissions(o.project, perms)),
            attempt(lambda: g.services_enabled(o.project, services))])
        if terr is not None and perr is not None:
            for e in (terr, perr):
                if vpc_refusal(e):  # not "the project does not exist": the perimeter hid it
                    raise UserError(explain(e, o.project)[0])
                if e.reason == "USER_PROJECT_DENIED":  # nor when the quota project is what Google refused
                    raise UserError(*explain(e, o.project))
            if isinstance(terr, (Transient, Unreachable)):
                raise UserError(explain(terr, o.project)[0])
            if isinstance(terr, Unauthenticated):
                raise BadInput(explain(terr, o.project)[0])
            raise BadInput(f"Project {o.project} does not exist, or {g.principal or 'your account'} cannot see it: "
                           "check --project.")
        if project is not None and project.state != "ACTIVE":
            # Told first: every other call about a project pending deletion is refused.
            raise BadInput(f"Project {o.project} is scheduled for deletion: restore it (gcloud projects undelete "
                           f"{o.project}) or choose another project.")
        if terr is not None:
            raise UserError(*explain(terr, o.project))
        missing = [p for p in perms if p not in held]
        if missing and not self.export:  # an export is applied by others: reading the project is enough
            raise UserError(missing_permissions_sentence(g.principal, o.project, missing), MISSING_PERMISSION)
        if perr is not None:
            raise UserError(*explain(perr, o.project))
        if serr is not None:
            raise UserError(*explain(serr, o.project))
        for s in CORE_SERVICES:
            if not states[s]:
                raise UserError(f"The API {s} is disabled in project {o.project}: enable it (gcloud services enable "
                                f"{s} --project {o.project}) and run again.")
        return states

    def read_org_policies(self, g: Google):
        """The organization's effective policies that bear on this run, and why they could not be read."""
        from coiled_setup import org_policies

        o = self.opts
        # Domain restricted sharing matters when Coiled makes its log sink (to BigQuery) in this run.
        sink_matters = o.upload and o.bigquery
        return org_policies.read(g, o.project, (org_policies.DOMAINS,) if sink_matters else ())

    def org_policies(self, cur: InPlace, journal: Journal, read) -> None:
        """What the organization will block (`read` by read_org_policies), told before the first write; a blocked
        run stops here."""
        from coiled_setup import org_policies
        from coiled_setup.steps.account import key_path

        o, ui = self.opts, self.ui
        sink_matters = o.upload and o.bigquery
        effective, skipped = read
        if skipped:
            ui.warn(f"Skipped the check of organization policies: {skipped}; a policy that blocks a step is told "
                    "when the step meets it.")
            return
        key_needed = (cur.coiled_credentials.get("client_email") != o.account_email if o.no_local_key
                      else not key_path(o, journal).exists())
        # With Artifact Registry the region holds the repository too: a region refused blocks the run, without
        # another call to learn whether the repository exists.
        from coiled_setup.log_sink import FLAG

        sink = ""
        if sink_matters:
            sink = (f"this run lifts it for project {o.project} while Coiled sets up ({FLAG}), then restores the "
                    "project's policy" if o.allow_log_sink_exception else
                    f"the run goes on without that grant ({FLAG} lifts it for the project while Coiled sets up, "
                    "then restores the project's policy)")
        found = org_policies.findings(effective, o.project, o.region, key_needed=key_needed, repository_needed=o.gar,
                                      registry_regions=o.repo_regions, log_sink=sink)
        self.lift_log_sink = o.allow_log_sink_exception and any(f.constraint == org_policies.DOMAINS for f in found)
        blocking = [f for f in found if f.blocks]
        for f in found:
            if f.blocks:
                org_policies.write_exception(o.project, f)
            ui.warn(f.sentence(o.project))
        if blocking:
            names = ", ".join(f"constraints/{f.constraint}" for f in blocking)
            one = len(blocking) == 1
            policy, verb, them = ("policy", "blocks", "its exception") if one else ("policies", "block",
                                                                                  "their exceptions")
            raise UserError(f"The organization {policy} {names} {verb} "
                            f"this setup, so nothing was changed: have {them} "
                            f"applied (gcloud org-policies set-policy with the file above, by someone with "
                            f"{org_policies.ADMIN_ROLE}), then run again.",
                            ORG_POLICY)

    def after_preflight(self, g: Google, coiled, cur: InPlace, services: dict[str, bool]) -> None:
        """After the preflight: who runs where, and the questions."""
        self.services = services
        self.ui.info(f"Project [bold]{self.opts.project}[/] as {g.principal or 'your account'}"
                     + (f", Coiled workspace [bold]{self.opts.workspace}[/]" if coiled else "")
                     + (" (a rehearsal against the local sandbox: nothing leaves this machine)"
                        if os.environ.get(SANDBOX_VAR) else ""))
        self.choose(g, cur)

    # -- interactive choices -------------------------------------------------------------------------
    def choose(self, g: Google, cur: InPlace) -> None:
        """The interactive questions, each defaulting to what is in place (Enter everywhere changes nothing)."""
        o, ui = self.opts, self.ui
        if not o.interactive:
            if o.open_firewall:
                ui.warn(f"Dask schedulers will accept connections on ports {','.join(map(str, o.firewall_ports))} "
                        f"from anywhere ({OPEN_CIDR}); pass --firewall-cidr with your network to narrow it.")
            return
        if "service_account" not in o.explicit:
            self._choose_account(g, cur)
        if "instance" not in o.explicit:
            self._choose_instance()
        if "firewall_cidr" not in o.explicit:
            if o.open_firewall:
                ui.warn(f"Dask schedulers accept connections on ports {','.join(map(str, o.firewall_ports))} "
                        f"from anywhere ({OPEN_CIDR}) unless you name a network.")
            o.firewall_cidr = ui.text("Network allowed to reach the schedulers (CIDR):", default=o.firewall_cidr,
                                      validate=_prompt_rule(lambda t: cidr_error(read_network(t)[0], ""))).strip()

    def _choose_account(self, g: Google, cur: InPlace) -> None:
        o, ui = self.opts, self.ui
        # The instance account a flag names cannot also be Coiled's.
        taken = o.instance_service_account if "instance" in o.explicit else None
        # Nor is the least-privilege account cluster instances use now offered as Coiled's own.
        accounts = [a.email for a in (self.accounts() if self.accounts else g.list_accounts(o.project))
                    if not a.disabled and a.email not in (g.principal, taken, cur.instance)]
        current = o.account_email
        first = (f"keep {current} ({cur.account_source})" if cur.account == current
                 else f"create or reuse {current}")
        other = "another account: type its name (created if it does not exist)"
        choice = ui.select("Service account for Coiled:", [first] + [a for a in accounts if a != current] + [other],
                           default=first)
        if choice == other:
            def rule(text):
                error = account_error(text, o.project, "")
                if not error and taken and Options(project=o.project, service_account=text).account_email == taken:
                    return f"{taken} is the instance service account: name another account for Coiled."
                return error

            choice = ui.text("Account id or email for Coiled:", validate=_prompt_rule(rule)).strip()
        if choice != first:
            o.service_account = choice

    def _choose_instance(self) -> None:
        o = self.opts
        made = default_instance_email(o.project)
        none = "none (no separate account for instances)"
        create = f"create or reuse {made} with least privilege"
        kept = o.instance_service_account
        # The control-plane account is never offered as the "separate" one.
        choices = ([none] + ([create] if made != o.account_email else [])
                   + ([f"keep {kept}"] if kept and kept != o.account_email else []))
        now = create if o.create_instance_service_account else f"keep {kept}" if kept else none
        choice = self.ui.select("Service account for cluster instances (a separate least-privilege one is "
                                "recommended when they read private data):", choices,
                                default=now if now in choices else none)
        o.create_instance_service_account = choice == create
        o.instance_service_account = kept if choice.startswith("keep ") else None

    def execute(self) -> int:
        o, ui = self.opts, self.ui
        self.resolve()
        g, coiled = self.connect("--no-upload")
        journal = Journal(o.project)
        why = paths.unwritable(journal.path)
        if why:
            raise BadInput(f"The journal {journal.path} cannot be written, {why}: set COILED_SETUP_HOME (or "
                           "XDG_STATE_HOME) to a writable directory, then run again.")
        if not o.dry_run:
            # Held from the first observation to the end: a second run would plan from the same state and make a
            # second key.
            self.lock = ProjectLock(o.project)
            self.lock.acquire()
        if o.interactive and "service_account" not in o.explicit:
            # The first question lists the project's accounts, a round trip per 100: listed while the workspace
            # is read and the preflight runs (its error, if any, is told when the list is used).
            self.accounts = start(lambda: g.list_accounts(o.project))
        # What is in place decides what this run does (Artifact Registry or not), so it comes before preflight.
        cur = read(o, coiled, journal)
        keep(o, cur)
        # A run that died while the policy was lifted puts the project's policy back before anything is read.
        restore = bool(journal.get(log_sink.PENDING)) and not o.dry_run and not self.export
        # With nothing to ask between them, the preflight goes out with the observations (and is told first).
        together = not o.interactive and not restore
        if not together:
            self.after_preflight(g, coiled, cur, self.preflight(g))
        self.network_only()
        check_instance_differs(o)
        validate(o)  # the interactive answers and the kept settings too
        if restore:
            log_sink.restore(g, o.project, journal, ui)
        self.run = Run(opts=o, google=g, journal=journal, ui=ui, coiled=coiled, services=dict(self.services),
                       coiled_credentials=cur.coiled_credentials)
        steps = registry.build(o)
        engine = self.make_engine(steps)

        # What the refusals before any write read, and the steps' observations, only read: they go out together,
        # and a refusal is told first.
        late = [s for s in steps if together and s.after_preflight]
        reads = [lambda: self.refuse_privileged_account(g), lambda: self.read_org_policies(g),
                 lambda: observed(engine, [s for s in steps if s not in late])]
        *found, policies, failed = run_all(([lambda: self.preflight(g)] if together else []) + reads)
        if together:
            self.after_preflight(g, coiled, cur, found[0])
            self.run.services.update(self.services)
            failed = failed or observed(engine, late)
        self.org_policies(cur, journal, policies)
        if failed is not None:
            raise failed
        self.run.lift_log_sink_policy = self.lift_log_sink
        if self.export:
            return self.write_export(steps)
        if self.plan_and_apply(steps, observed=True):
            self.finish()
        return OK

    def write_export(self, steps) -> int:
        """The plan, observed read-only, written as Terraform or a gcloud script; nothing in the project changes."""
        from rich.markup import escape

        from coiled_setup import __version__, export, inventory
        from coiled_setup.engine import Consent

        kind, target = self.export
        self.engine = engine = Engine(self.run, steps, Consent(interactive=False, dry_run=True), self.opts.project)
        engine.plan(observed=True)
        engine.show()
        items = inventory.collect(self.run, steps, observed=True)
        written = export.write(kind, target, items, self.opts, self.terraform_key, __version__)
        self.ui.info(f"Wrote this plan as {'Terraform' if kind == 'terraform' else 'a gcloud script'}: "
                     f"{escape(', '.join(map(str, written)))} (the checks and Coiled's part are not in it). Nothing "
                     "was changed.")
        return OK

    def finish(self) -> None:
        o, run, ui = self.opts, self.run, self.ui
        # What this setup is, so that `verify` checks it rather than the defaults.
        try:
            run.journal.record_settings(
                region=o.region, zone=o.zone, role_id=o.role_id, gar=o.gar, bigquery=o.bigquery,
                account=o.account_email,
                registry_regions=list(o.repo_regions[1:]),  # the registry regions besides the cluster region
                instance_service_account=run.instance_email, key_file=run.key_path, local_key=not o.no_local_key,
                upload=o.upload, workspace=o.workspace if o.upload else None,
                firewall_cidr=o.firewall_cidr if o.upload else None,
                firewall_ports=list(o.firewall_ports) if o.upload else None)
        except OSError as e:  # the setup itself is done; only verify's defaults are lost
            ui.warn(f"Could not record this run's settings ({e.strerror or e}): pass the same --region, --role-id "
                    "and --no-gar to verify.")
        self.engine.summary()
        self.offer_quota()
        if run.key_path:
            ui.info(f"The key of {o.account_email} is in {run.key_path} (mode 0600). Keep it private.")
        if os.environ.get(SANDBOX_VAR):
            ui.info("This was a rehearsal against the local sandbox: nothing in Google Cloud or Coiled changed. "
                    "Run it again to see a converged run, or add --sandbox-reset to start from a fresh project.")
        if not o.upload:
            ui.info(
                "Left to do by hand in Coiled (Account → Cloud Backend Options → GCP → your own account): choose "
                f"region {o.region} and zone {o.zone}, upload the key file"
                + (f" {run.key_path}" if run.key_path else "")
                + (", choose Google Artifact Registry" if o.gar else "")
                + (f", and set the instance service account {run.instance_email}" if run.instance_email else "")
                + "."
            )


    def offer_quota(self) -> None:
        """Interactive only: in each region where fewer than 10 workers fit, offers to ask Google for more (never
        forced)."""
        if not self.opts.interactive:
            return
        from coiled_setup.commands.quotas import offer

        readings = next((getattr(s, "readings", []) for s in self.engine.steps if s.key == "quotas"), [])
        for reading in readings:
            if reading.warning:
                offer(self.run.google, reading, self.ui)


def observed(engine: Engine, steps) -> UserError | None:
    """Observes the steps together; answers the refusal that stopped them, told after the preflight's."""
    try:
        engine.observe_all(steps)
    except UserError as e:
        return e
    return None


def run(opts: Options, export: tuple[str, Path] | None = None, terraform_key: bool = False) -> int:
    from coiled_setup.export import kind_error

    wrong = kind_error(export[0]) if export else None
    if terraform_key and (not export or export[0] != "terraform"):
        wrong = "--terraform-key goes with --export terraform DIR: add it, or drop --terraform-key."
    if wrong:
        raise BadInput(wrong)
    ui = Ui(interactive=opts.interactive, output=opts.output)
    return Wizard(opts, ui, export, terraform_key).drive()
