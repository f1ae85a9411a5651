"""What the commands share: connecting to Google as the operator, and to Coiled's workspace."""

from __future__ import annotations

import os
import sys

from coiled_setup import context
from coiled_setup.cloud import CloudError, Google, NoCredentials, Transient, Unreachable, preload
from coiled_setup.coiled_api import Coiled, CoiledUnauthorized
from coiled_setup.concurrency import run_all
from coiled_setup.errors import BadInput, UserError
from coiled_setup.remedies import explain
from coiled_setup.wording import listing


def notice(text: str) -> None:
    """A line on stderr while waiting (stdout may carry a JSON document)."""
    print(text, file=sys.stderr, flush=True)


def connect_google(notify=notice, project: str = "", clients: tuple[str, ...] = ()) -> Google:
    """The operator's Google, its credentials accepted and its endpoint answering (refused credentials are bad
    input, told at once; a Google that does not answer is told within seconds, and given up on in 30). The
    `clients` the command calls are imported meanwhile."""
    if clients:
        preload(clients)
    try:
        g = Google.from_environment()
    except NoCredentials as e:
        raise BadInput(no_credentials_sentence(str(e))) from None
    if g.use_quota_project(project) and notify is not None:
        notify(f"Your user credentials name no quota project: Google bills their API calls to project {project} "
               "(choose another with `gcloud auth application-default set-quota-project` or "
               "GOOGLE_CLOUD_QUOTA_PROJECT).")
    g.notify = notify
    try:
        g.authenticate()
        g.wait_reachable()
    except CloudError as e:
        g.close()
        if isinstance(e, (Transient, Unreachable)):
            raise UserError(explain(e, "")[0]) from None
        raise BadInput(explain(e, "")[0]) from None
    return g


def no_credentials_sentence(reason: str) -> str:
    """Why Application Default Credentials failed: a file named by GOOGLE_APPLICATION_CREDENTIALS is named."""
    path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if not path:
        return ("No Google credentials found: run `gcloud auth application-default login`, or set "
                "GOOGLE_APPLICATION_CREDENTIALS to a key file.")
    if not os.path.exists(path):
        what = "does not exist"
    elif not os.path.isfile(path) or not os.access(path, os.R_OK):
        what = "cannot be read"
    else:
        what = f"is not a credentials file ({reason.rstrip('.')})"
    return (f"GOOGLE_APPLICATION_CREDENTIALS names {path}, which {what}: point it at a service account key or "
            "credentials file, or unset it and run `gcloud auth application-default login`.")


def coiled_client(server_flag: str | None, workspace_flag: str | None,
                  skip_flag: str | None) -> tuple[Coiled, str | None]:
    """A Coiled client for the user's login, and the workspace asked for (if any)."""
    token, server, workspace = context.coiled_login(server_flag, workspace_flag)
    if not token:
        if os.environ.get("DASK_COILED__TOKEN") == "":
            raise BadInput("DASK_COILED__TOKEN is set but empty, which hides any token in your dask config files (as "
                           "in dask itself): unset it or set it to your Coiled token.")
        if not skip_flag:
            raise BadInput("No Coiled login found: run `coiled login` or set DASK_COILED__TOKEN.")
        raise BadInput(f"No Coiled login found: run `coiled login`, set DASK_COILED__TOKEN, or pass {skip_flag}.")
    c = Coiled(server, token)
    c.notify = notice
    return c, workspace


def confirmer(interactive: bool, yes: bool, ui):
    """How a run answers Coiled's confirmation questions (HTTP 409 action_required "confirm"), as Coiled's own
    client does: asked when the run can ask, confirmed by --yes (and said so), else a stop naming the question."""
    def confirm(detail: str) -> bool:
        question = detail.strip().rstrip(".?") or "Coiled asks for a confirmation"
        if yes:
            notice(f"Coiled asked: {question}? Confirmed (--yes).")
            return True
        if interactive:
            ui.stop()
            return ui.confirm(f"Coiled asks: {question}? Go on?", default=False)
        raise BadInput(f"Coiled asks to confirm: {question}? Run again with --yes to confirm it, or in a terminal "
                       "to be asked.")
    return confirm


def workspace_reads(c: Coiled) -> tuple[dict, list]:
    """Who the user is and the workspaces they belong to: two independent reads, made together."""
    try:
        me, memberships = run_all([c.me, c.memberships])
    except CoiledUnauthorized as e:
        raise BadInput(e.message) from None
    return me, memberships


def choose_workspace(c: Coiled, wanted: str | None, ask=None, reads: tuple[dict, list] | None = None) -> str:
    """The workspace to use, as Coiled's own client picks it: the one asked for (flag, DASK_COILED__WORKSPACE,
    coiled.workspace), else the one Coiled marks as the user's default, else the only one, else `ask`'s pick.

    `reads` are workspace_reads(c) when they were already made."""
    _, memberships = reads if reads is not None else workspace_reads(c)
    accounts = [m.get("account") or {} for m in memberships if isinstance(m, dict)]
    slugs = [a.get("slug") for a in accounts if a.get("slug")]
    marked = [m["account"]["slug"] for m in memberships
              if isinstance(m, dict) and m.get("is_default_account") and (m.get("account") or {}).get("slug")]
    if wanted:
        if wanted not in slugs:
            named = [a["slug"] for a in accounts
                     if a.get("slug") and str(a.get("name") or "").lower() == wanted.lower()]
            if named:
                raise BadInput(f"{wanted!r} is the name of your Coiled workspace {named[0]!r}: pass its slug, "
                               f"--workspace {named[0]}.")
            raise BadInput(f"Coiled workspace {wanted!r} is not one of yours ({', '.join(slugs) or 'none'}): "
                           "pass --workspace with one of them.")
        choice = wanted
    elif marked:
        choice = marked[0]
    elif len(slugs) == 1:
        choice = slugs[0]
    elif not slugs:
        raise BadInput("Your Coiled login belongs to no workspace: ask a workspace admin to invite you, or create "
                       "one at Coiled, then run again.")
    elif ask is not None:
        choice = ask(slugs)
    else:
        raise BadInput(f"You belong to several Coiled workspaces ({', '.join(slugs)}) and none is marked as your "
                       "default: pass --workspace with one of them.")
    c.workspace = choice
    return choice


class Session:
    """What a plan/apply command holds while it runs (its lock, its run record, its engine): released, and the
    ending told in one sentence (and the JSON document), however the command ends."""

    idle = ""  # what a plan without writes says, when not the engine's default
    clients: tuple[str, ...] = ()  # the Google clients its first calls use, imported while it connects

    def __init__(self, command: str, opts, ui):
        self.command, self.opts, self.ui = command, opts, ui
        self.lock = None
        self.run = None
        self.engine = None

    def check_local_files(self, steps) -> None:
        """Every local file the plan writes can be written, told before the first change (exit 2)."""
        from rich.markup import escape

        from coiled_setup import paths

        files = [f for s in steps for f in s.local_files(self.run)]
        for f in files:
            why = paths.unwritable(f.path)
            if why:
                raise BadInput(f"{f.what} {f.path} cannot be written, {why}: {f.fix}, then run again.")
        for f in files:
            if f.private and f.path.parent.is_dir() and paths.readable_by_others(f.path.parent):
                self.ui.warn(f"{f.what}'s directory {escape(str(f.path.parent))} is readable by other users (the "
                             "file itself will be 0600).")

    def connect(self, skip_flag: str | None):
        """The operator's Google and, unless --no-upload / --no-coiled, Coiled's workspace (chosen as gcp does)."""
        o = self.opts

        def coiled():
            if not o.upload:
                return None
            c, wanted = coiled_client(o.coiled_server, o.workspace, skip_flag)
            reads = workspace_reads(c)
            if not o.interactive:  # a workspace chosen without asking: its reads go out while Google connects
                try:
                    choose_workspace(c, wanted, None, reads)
                except BadInput:
                    pass  # told by the choice below
                else:
                    self.read_coiled_early(c)
            return c, wanted, reads

        g, found = run_all([lambda: connect_google(project=o.project, clients=self.clients), coiled])
        if found is None:
            return g, None
        c, wanted, reads = found
        ask = (lambda slugs: self.ui.select("Coiled workspace:", slugs)) if o.interactive else None
        o.workspace = choose_workspace(c, wanted, ask, reads)
        c.confirm = confirmer(o.interactive, o.yes, self.ui)
        return g, c

    def read_coiled_early(self, c: Coiled) -> None:
        """The workspace's reads the command makes first, kept for it (Coiled's client keeps them until a write)."""

    def check_permissions(self, g, steps) -> None:
        """The operator holds every permission the steps use (one call), before the first write; exit 3 if not."""
        from coiled_setup.errors import MISSING_PERMISSION
        from coiled_setup.remedies import missing_permissions_sentence

        project = self.opts.project
        perms = list(dict.fromkeys(p for s in steps for p in s.permissions))
        try:
            held = g.test_permissions(project, perms)
        except CloudError as e:
            raise UserError(*explain(e, project)) from None
        missing = [p for p in perms if p not in held]
        if missing:
            raise UserError(missing_permissions_sentence(g.principal, project, missing), MISSING_PERMISSION)

    def make_engine(self, steps):
        from coiled_setup.engine import Consent, Engine

        o = self.opts
        consent = Consent(interactive=o.interactive, yes=o.yes, dry_run=o.dry_run, wait_timeout=o.wait_timeout,
                          **({"idle": self.idle} if self.idle else {}))
        # The wizard's steps declare what they wait for; rotate-key's and teardown's go one at a time.
        self.engine = Engine(self.run, steps, consent, o.project, together=self.command == "gcp")
        return self.engine

    def plan_and_apply(self, steps, observed: bool = False) -> bool:
        """Plans the steps (observing them first unless `observed`), checks the files they write, shows the plan
        and, with consent, applies it; answers whether it applied."""
        engine = self.engine if observed else self.make_engine(steps)
        engine.plan(observed)
        self.check_local_files(steps)
        engine.show()
        if not engine.agreed():
            return False
        engine.apply()
        return True

    def report_fields(self) -> dict:
        o, run, engine = self.opts, self.run, self.engine
        return {"project": o.project or None, "workspace": o.workspace,
                "service_account": o.account_email if o.project else None,
                "key_file": str(run.key_path) if run and run.key_path else None,
                "steps": engine.results if engine else [], "conflicts_retried": self.ui.conflicts,
                # Coiled's repository in each registry region (gcp and teardown's documents carry them).
                **({"repositories": o.repositories if o.project else []}
                   if self.command in ("gcp", "teardown") else {})}

    def drive(self, execute) -> int:
        from coiled_setup import report
        from coiled_setup.errors import INTERRUPTED, OK, STEP_FAILED

        ui = self.ui
        code, error = OK, None
        try:
            code = execute()
        except UserError as e:
            code, error = e.code, e.message
            if code != OK:
                ui.error(e.message)
            else:
                ui.info(e.message)
        except CloudError as e:  # a refusal no step could place: still one sentence
            error, code = explain(e, self.opts.project)
            ui.error(error)
        except KeyboardInterrupt:
            code = INTERRUPTED
            done = self.engine.done() if self.engine else []
            current = self.engine.under_way() if self.engine else []
            where = (" during " + listing(f"'{t}'" for t in current)) if current else ""
            error = (f"Interrupted{where}; done so far: {', '.join(done) or 'nothing'}. Run the same command again "
                     "to resume where it stopped.")
            ui.error(error)
        except Exception as e:
            code, error = STEP_FAILED, report.unexpected(e)
            raise
        finally:
            ui.stop()
            if self.lock is not None:
                self.lock.release()
            if self.run is not None:
                self.run.google.close()
            if self.opts.output == "json":
                report.emit(self.command, code, error, **self.report_fields())
        return code
