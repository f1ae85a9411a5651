"""Last: hand the credentials and settings to Coiled, wait for its infrastructure, record backend options."""

from __future__ import annotations

import contextlib

from rich.markup import escape

from coiled_setup import context, log_sink, paths, waiting
from coiled_setup.concurrency import run_all
from coiled_setup.errors import UserError
from coiled_setup.remedies import command
from coiled_setup.steps.account import delete_key
from coiled_setup.steps.base import CREATE, NOTHING, UPDATE, Change, LocalFile, Run, Step
from coiled_setup.wording import count


def firewall_spec(opts) -> dict:
    return {"ingress": [{"ports": list(opts.firewall_ports), "cidr": opts.firewall_cidr}]}


def local_backend_options(opts) -> dict:
    """coiled.backend-options for the dask config (--write-dask-config), in the names current clients accept
    without a warning (coiled.types.GCPOptions). Only old clients apply them: the workspace's settings rule."""
    return {
        "region_name": opts.region,
        "zone_name": opts.zone,
        "spot": opts.preemptible,
        "ingress": [{"ports": list(opts.firewall_ports), "cidr": opts.firewall_cidr}],
    }


# Names earlier versions of coiled-setup wrote, which current clients ignore ("not a recognized key") or warn
# about ("deprecated"); left in the user's file, but named.
OLD_CONFIG_KEYS = ("region", "zone", "preemptible", "firewall")
# What the dask config can say that no workspace setting holds: one line of Python per cluster.
SPOT_LINE = {True: 'coiled.Cluster(..., spot_policy="spot_with_fallback")',
             False: 'coiled.Cluster(..., spot_policy="on-demand")'}
# Read by old clients only: coiled 0.2.0's Cluster merges coiled.backend-options into its backend_options;
# coiled 1.0.0 and 1.135.6 read the key and never apply it.
CONFIG_READERS = "only older coiled clients (0.2-era) apply it; coiled 1.x reads it and ignores it"


def _change(what: str, old, new) -> str:
    return f"{what} {old if old not in (None, '') else 'none'} → {new if new not in (None, '') else 'none'}"


def _key(kid) -> str | None:
    return f"{kid[:12]}…" if kid else None


def _setting(value) -> str | None:
    if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
        return "; ".join(_setting(r) or "?" for r in value)
    if isinstance(value, dict) and "cidr" in value:
        return f"{value.get('cidr')} on ports {','.join(map(str, value.get('ports') or []))}"
    if isinstance(value, bool):
        return "true" if value else "false"  # as the YAML file spells it, not as Python does
    return None if value is None else str(value)


def _firewall_change(old, new) -> str:
    """The scheduler firewall, old → new, naming only what differs (network, ports) when both are simple."""
    def rules(spec) -> list:
        return (spec.get("ingress") or []) if isinstance(spec, dict) else []

    was, now = rules(old), rules(new)
    if len(was) == 1 and len(now) == 1 and isinstance(was[0], dict):
        parts = []
        if was[0].get("cidr") != now[0]["cidr"]:
            parts.append(_change("firewall", was[0].get("cidr"), now[0]["cidr"]))
        if was[0].get("ports") != now[0]["ports"]:
            parts.append(_change("firewall ports", ",".join(map(str, was[0].get("ports") or [])),
                                 ",".join(map(str, now[0]["ports"]))))
        if parts:
            return ", ".join(parts)

    def text(rs):
        return "; ".join(_setting(r) or "?" for r in rs) or None

    return _change("firewall", text(was), text(now))


def _state(component) -> str:
    return (component or {}).get("state") or "absent"


class UploadStep(Step):
    key = "upload"
    title = "Coiled backend"
    # Without the instance account the user chose, Coiled would get another security setting than planned.
    after = ("account", "confirm", "instance")
    alone = True  # Coiled gets the key once everything it will use is in place
    reads = ("key_id", "keyfile", "instance_email", "lift_log_sink_policy")
    permissions = ("iam.serviceAccountKeys.list", "iam.serviceAccountKeys.delete")  # retiring older keys

    def __init__(self):
        self.view: dict = {}

    def observe(self, run: Run) -> None:
        c = run.coiled
        bo, settings, glob, regions = run_all([c.backend_options, c.get_settings, c.get_global,
                                               c.get_regions])  # independent reads
        options = bo.get("options") or {}
        # The workspace's own settings hold the scheduler firewall; a Coiled without that read shows it in the
        # backend options.
        firewall = settings.get("scheduler_firewall") if settings is not None else options.get("firewall_spec")
        self.view = {
            "credentials": options.get("gcp_service_creds_dict") or {},
            "instance": options.get("instance_service_account"),
            "settings": settings,
            "firewall": firewall,
            "registry": options.get("registry") or {},
            "global": _state(glob.get("component")),
            "region": next((_state(r.get("component")) for r in regions
                            if r.get("region") == run.opts.region and r.get("default")), "absent"),
            "region_name": next((r.get("region") for r in regions if r.get("default")), None),
            "config": context.backend_options_in_config() if run.opts.write_dask_config else {},
        }

    def _changes(self, run: Run) -> list[tuple[str, str]]:
        """What Coiled (and the dask config) will be sent: (part, old → new of each setting it changes)."""
        o, v = run.opts, self.view
        creds = v["credentials"]
        key_id = run.key_id  # None: the account step makes a new one
        todo = []
        said = []
        if creds.get("client_email") != o.account_email:
            said.append(_change("account", creds.get("client_email"), o.account_email))
        elif creds.get("private_key_id") != key_id:
            said.append(_change("key", _key(creds.get("private_key_id")), _key(key_id) if key_id else "a new key"))
        if v["instance"] != run.instance_email:
            said.append(_change("instance account", v["instance"], run.instance_email))
        if said:
            todo.append(("credentials", ", ".join(said)))
        if v["firewall"] != firewall_spec(o) or self._public_ips(run):
            parts = [_firewall_change(v["firewall"], firewall_spec(o))] if v["firewall"] != firewall_spec(o) else []
            parts += [_change(k.replace("give_", "").replace("_", " "), None, "true") for k in self._public_ips(run)]
            todo.append(("firewall", ", ".join(parts)))
        if o.gar and v["registry"].get("type") != "gar":
            todo.append(("registry", _change("registry", v["registry"].get("type"), "Artifact Registry")))
        if v["global"] != "created" or said:
            todo.append(("global infrastructure", "global infrastructure"))
        if v["region"] != "created" or said:
            moved = v["region_name"] and v["region_name"] != o.region
            todo.append((f"region {o.region}", _change("default region", v["region_name"], o.region) if moved
                         else f"region {o.region}"))
        if o.write_dask_config:
            wanted = local_backend_options(o)
            old = {k: v["config"].get(k) for k in wanted}
            if old != wanted:
                if all(x is None for x in old.values()):
                    said_config = "dask config (none yet) → " + ", ".join(f"{k} {_setting(x)}"
                                                                         for k, x in wanted.items())
                else:
                    said_config = "dask config " + ", ".join(
                        _change(k, _setting(old[k]), _setting(wanted[k])) for k in wanted if old[k] != wanted[k])
                todo.append(("dask config", said_config))
        return todo

    def _public_ips(self, run: Run) -> list[str]:
        """Public-IP settings the workspace has not set yet: given the official setup's value (true); a value
        already set is the workspace owner's choice, kept."""
        settings = self.view.get("settings")
        if settings is None:
            return []
        return [k for k in ("give_scheduler_public_ip", "give_workers_public_ip") if settings.get(k) is None]

    def _pending(self, run: Run) -> list[str]:
        return [part for part, _ in self._changes(run)]

    def local_files(self, run: Run) -> list[LocalFile]:
        if "dask config" not in self._pending(run):
            return []
        return [LocalFile(paths.dask_config_file(), "The dask config file",
                          "fix it or set DASK_CONFIG to a writable directory")]

    def plan(self, run: Run) -> Change:
        todo = self._changes(run)
        if not todo:
            return Change(NOTHING, f"workspace {run.coiled.workspace} uses {run.opts.account_email}")
        action = CREATE if todo[0][0] == "credentials" and not self.view["credentials"] else UPDATE
        return Change(action, f"workspace {run.coiled.workspace}: " + "; ".join(detail for _, detail in todo))

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
        # The workspace's settings and its registry are independent of each other: sent together.
        settings = {"scheduler_firewall": firewall_spec(o), **{k: True for k in self._public_ips(run)}}
        run_all([lambda: c.settings(settings) if "firewall" in todo else None,
                 lambda: c.set_registry({"type": "gar"}) if "registry" in todo else None])
        if "global infrastructure" in todo:
            # Coiled makes its log sink now, and grants the sink's writer identity a role.
            with log_sink.lifted(run) if run.lift_log_sink_policy else contextlib.nullcontext():
                c.start_global()
                self._await(run, lambda: (c.get_global().get("component") or {}), "Coiled's global infrastructure")
        if f"region {o.region}" in todo:
            c.start_region(o.region)
            self._await(run, lambda: next((r.get("component") or {} for r in c.get_regions()
                                           if r.get("region") == o.region), {}), f"Coiled's region {o.region}")
        if "dask config" in todo:
            f = context.write_backend_options(local_backend_options(o), warn=lambda text: run.ui.warn(escape(text)))
            run.ui.info(escape(f"Wrote coiled.backend-options into {f}: {CONFIG_READERS}."))
        if o.write_dask_config:
            stale = [k for k in OLD_CONFIG_KEYS if k in context.backend_options_in_config()]
            if stale:
                run.ui.warn(escape(f"coiled.backend-options in your dask config still holds {', '.join(stale)}, "
                                   "names current coiled clients ignore or warn about: remove them."))
        run.ui.info(escape(f"Spot (preemptible) workers are chosen per cluster, not per workspace: "
                           f"{SPOT_LINE[bool(o.preemptible)]}"))
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
                n += delete_key(run, kid)
            else:
                run.journal.drop_key(kid)
        return n


def steps_for(opts) -> list[Step]:
    return [UploadStep()] if opts.upload else []
