"""Last: hand the credentials and settings to Coiled, wait for its infrastructure, record backend options."""

from __future__ import annotations

from rich.markup import escape

from coiled_setup import context, waiting
from coiled_setup.cloud import CloudError, run_all
from coiled_setup.errors import UserError
from coiled_setup.steps.base import CREATE, NOTHING, UPDATE, Change, Run, Step
from coiled_setup.wording import count
from coiled_setup.remedies import command


def firewall_spec(opts) -> dict:
    return {"ingress": [{"ports": list(opts.firewall_ports), "cidr": opts.firewall_cidr}]}


def local_backend_options(opts) -> dict:
    return {
        "region": opts.region,
        "zone": opts.zone,
        "preemptible": opts.preemptible,
        "firewall": {"ports": list(opts.firewall_ports), "cidr": opts.firewall_cidr},
    }


def _state(component) -> str:
    return (component or {}).get("state") or "absent"


class UploadStep(Step):
    key = "upload"
    title = "Coiled backend"

    def __init__(self, account_step):
        self.account_step = account_step
        self.view: dict = {}

    def observe(self, run: Run) -> None:
        c = run.coiled
        bo, glob, regions = run_all([c.backend_options, c.get_global, c.get_regions])  # independent reads
        options = bo.get("options") or {}
        self.view = {
            "credentials": options.get("gcp_service_creds_dict") or {},
            "instance": options.get("instance_service_account"),
            "firewall": options.get("firewall_spec"),
            "registry": options.get("registry") or {},
            "global": _state(glob.get("component")),
            "region": next((_state(r.get("component")) for r in regions
                            if r.get("region") == run.opts.region and r.get("default")), "absent"),
            "config": context.backend_options_in_config(),
        }
        run.coiled_view = self.view

    def _pending(self, run: Run) -> list[str]:
        o, v = run.opts, self.view
        creds = v["credentials"]
        key_id = run.key_id if run.key_id else (None if self.account_step.needs_key(run) else
                                                self.account_step._local_id() or self.account_step._coiled_key(run))
        todo = []
        if (creds.get("client_email") != o.account_email or creds.get("private_key_id") != key_id
                or v["instance"] != run.instance_email):
            todo.append("credentials")
        if v["firewall"] != firewall_spec(o):
            todo.append("firewall")
        if o.gar and v["registry"].get("type") != "gar":
            todo.append("registry")
        if v["global"] != "created" or "credentials" in todo:
            todo.append("global infrastructure")
        if v["region"] != "created" or "credentials" in todo:
            todo.append(f"region {o.region}")
        wanted = local_backend_options(o)
        if {k: v["config"].get(k) for k in wanted} != wanted:
            todo.append("dask config")
        return todo

    def plan(self, run: Run) -> Change:
        todo = self._pending(run)
        if not todo:
            return Change(NOTHING, f"workspace {run.coiled.workspace} uses {run.opts.account_email}")
        action = CREATE if "credentials" in todo and not self.view["credentials"] else UPDATE
        return Change(action, f"workspace {run.coiled.workspace}: " + ", ".join(todo))

    def apply(self, run: Run) -> str:
        c, o = run.coiled, run.opts
        todo = self._pending(run)
        if "credentials" in todo:
            if run.keyfile is None:
                raise UserError(
                    "Coiled needs the key's private half, which this run does not have: run again without "
                    "--no-local-key, or with --key-file pointing to the key."
                )
            c.store_credentials(run.keyfile, run.instance_email)
        if "firewall" in todo:
            c.settings({"scheduler_firewall": firewall_spec(o), "give_scheduler_public_ip": True})
        if "registry" in todo:
            c.set_registry({"type": "gar"})
        if "global infrastructure" in todo:
            c.start_global()
            self._await(run, lambda: (c.get_global().get("component") or {}), "Coiled's global infrastructure")
        if f"region {o.region}" in todo:
            c.start_region(o.region)
            self._await(run, lambda: next((r.get("component") or {} for r in c.get_regions()
                                           if r.get("region") == o.region), {}), f"Coiled's region {o.region}")
        if "dask config" in todo:
            context.write_backend_options(local_backend_options(o), warn=lambda text: run.ui.warn(escape(text)))
        retired = self._retire_old_keys(run)
        outcome = ("sent " + ", ".join(todo)) if todo else "nothing to do"
        return outcome + (f"; deleted {count(retired, 'old key')} coiled-setup had made" if retired else "")

    def _await(self, run: Run, read, what: str) -> None:
        def check():
            comp = read()
            state = comp.get("state")
            if state == "error":
                raise UserError(
                    f"Coiled could not set up {what}: {comp.get('reason') or 'no reason given'}; fix that and run "
                    f"again ({command('verify')} shows what is missing)."
                )
            return state == "created"

        waiting.poll(check, timeout=run.opts.wait_timeout, what=f"waiting for {what}", tick=run.ui.tick)

    def _retire_old_keys(self, run: Run) -> int:
        """Keys this tool made earlier for the account, now that Coiled holds the current one."""
        if not run.key_id:
            return 0
        old = [k for k in run.journal.our_keys() if k != run.key_id]
        if not old:
            return 0
        live = {k.key_id for k in run.google.list_user_keys(run.opts.account_email)}
        n = 0
        for kid in old:
            if kid in live:
                try:
                    run.google.delete_key(run.opts.account_email, kid)
                    n += 1
                except CloudError as e:
                    if e.code != "NOT_FOUND":
                        raise
            run.journal.drop_key(kid)
        return n
