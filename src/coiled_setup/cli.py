"""The command line: parses flags and delegates; nothing heavy is imported before a command runs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from coiled_setup import __version__

EXIT_CODES = ("Exit codes: 0 done (or nothing to do), 1 a step failed, 2 bad input, "
              "3 your account lacks a needed permission, 130 interrupted.")

app = typer.Typer(
    name="coiled-setup",
    help="Set up a Google Cloud project for Coiled in one safe, repeatable command.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"coiled-setup {__version__}")
        raise typer.Exit()


def _help(ctx: typer.Context, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        typer.echo(ctx.get_help(), color=ctx.color)
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
    # Our own --help, defaulting to False: typer's defaults to None, and coercing that None builds a pydantic
    # validator, importing pydantic (80 ms, 14 MiB) before every command, `coiled-setup gcp --help` included.
    show_help: bool = typer.Option(False, "--help", callback=_help, is_eager=True, expose_value=False,
                                   help="Show this message and exit."),
) -> None:
    """Set up a Google Cloud project for Coiled in one safe, repeatable command."""


def _finish(code: int) -> None:
    raise typer.Exit(code)


def _guard(fn):
    """Expected failures print one sentence and exit with their code, never a traceback."""
    from coiled_setup.errors import UserError

    try:
        return fn()
    except UserError as e:
        from coiled_setup.ui import Ui

        Ui(interactive=False).error(e.message)
        return e.code
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        return 130


@app.command(epilog=EXIT_CODES)
def gcp(
    project: Optional[str] = typer.Option(None, help="Project id (default: GOOGLE_CLOUD_PROJECT, then gcloud's)."),
    workspace: Optional[str] = typer.Option(None, help="Coiled workspace (default: your only or personal one)."),
    region: str = typer.Option("us-east1", help="Region for clusters and the registry."),
    zone: Optional[str] = typer.Option(None, help="Zone inside the region (default: REGION-c)."),
    service_account: Optional[str] = typer.Option(None, help="Account id or email for Coiled [default: coiled]."),
    key_file: Optional[Path] = typer.Option(None, help="Key file to reuse, or where to write a new key."),
    no_local_key: bool = typer.Option(False, "--no-local-key", help="Keep a new key in memory only, for the upload."),
    role_id: str = typer.Option("coiled", help="Id of the custom role."),
    no_gar: bool = typer.Option(False, "--no-gar", help="Skip Artifact Registry (use another registry)."),
    instance_service_account: Optional[str] = typer.Option(None, help="Existing account for cluster instances."),
    create_instance_service_account: bool = typer.Option(
        False, "--create-instance-service-account", help="Create a least-privilege account for instances."),
    preemptible: bool = typer.Option(True, "--preemptible/--no-preemptible", help="Use preemptible workers."),
    firewall_cidr: Optional[str] = typer.Option(None, help="Network allowed to reach schedulers [default: 0.0.0.0/0]."),
    firewall_ports: str = typer.Option("22,8786,8787", help="Scheduler ports to open."),
    no_upload: bool = typer.Option(False, "--no-upload", help="Do not send anything to Coiled."),
    coiled_server: Optional[str] = typer.Option(None, help="Coiled server (default: from your Coiled login)."),
    wait_timeout: float = typer.Option(600.0, help="Longest wait for Google to propagate changes, in seconds."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan and change nothing."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Apply the plan without asking."),
    non_interactive: bool = typer.Option(False, "--non-interactive", help="Never prompt (for CI)."),
    output: str = typer.Option("text", help="text, or json for one JSON document on stdout."),
    sandbox: bool = typer.Option(False, "--sandbox", help="Rehearse against a local sandbox, not Google."),
    sandbox_reset: bool = typer.Option(False, "--sandbox-reset", help="With --sandbox: start from a fresh project."),
) -> None:
    """Create the service account, key, role, binding and registry Coiled needs, then configure Coiled."""

    def go() -> int:
        from coiled_setup.commands import gcp as command
        from coiled_setup.options import DEFAULT_ACCOUNT_ID, OPEN_CIDR, Options, parse_ports

        given = {name for name, value in (("service_account", service_account), ("firewall_cidr", firewall_cidr),
                                          ("instance", instance_service_account or create_instance_service_account))
                 if value}
        opts = Options(
            project=project or "", workspace=workspace, region=region, zone=zone,
            service_account=service_account or DEFAULT_ACCOUNT_ID, key_file=key_file, no_local_key=no_local_key,
            role_id=role_id, gar=not no_gar, instance_service_account=instance_service_account,
            create_instance_service_account=create_instance_service_account, preemptible=preemptible,
            firewall_cidr=firewall_cidr or OPEN_CIDR, firewall_ports=parse_ports(firewall_ports),
            upload=not no_upload, dry_run=dry_run, yes=yes,
            interactive=not non_interactive and sys.stdin.isatty(), output=output,
            wait_timeout=wait_timeout, coiled_server=coiled_server, explicit=given,
        )
        sb = command.start_embedded_sandbox(fresh=sandbox_reset) if sandbox or sandbox_reset else None
        try:
            return command.run(opts)
        finally:
            if sb is not None:
                sb.stop()

    _finish(_guard(go))


VERIFY_EXIT_CODES = ("Exit codes: 0 every check passed (warnings allowed unless --strict), 1 a check failed, "
                     "2 bad input (for example an unknown project), 130 interrupted.")


@app.command(epilog=VERIFY_EXIT_CODES)
def verify(
    project: Optional[str] = typer.Option(None, help="Project id (default: GOOGLE_CLOUD_PROJECT, then gcloud's)."),
    key_file: Optional[Path] = typer.Option(None, help="The Coiled account's key file [default: the one coiled-setup "
                                                       "gcp wrote for the project]."),
    role_id: Optional[str] = typer.Option(None, help="Id of the custom role (default: as gcp recorded, else coiled)."),
    region: Optional[str] = typer.Option(None, help="Region of the clusters and the registry (default: as gcp "
                                                    "recorded, else Coiled's, else us-east1)."),
    gar: Optional[bool] = typer.Option(None, "--gar/--no-gar", help="Check Artifact Registry (default: as gcp "
                                                                    "recorded, else on)."),
    instance_service_account: Optional[str] = typer.Option(
        None, help="Account for cluster instances (default: as gcp recorded, else Coiled's)."),
    workspace: Optional[str] = typer.Option(None, help="Coiled workspace (default: your only or personal one)."),
    no_coiled: bool = typer.Option(False, "--no-coiled", help="Skip the checks of what Coiled holds."),
    coiled_server: Optional[str] = typer.Option(None, help="Coiled server (default: from your Coiled login)."),
    strict: bool = typer.Option(False, "--strict", help="Fail on warnings too."),
    output: str = typer.Option("text", help="text, or json for one JSON document on stdout."),
    sandbox: bool = typer.Option(False, "--sandbox", help="Check the sandbox that `gcp --sandbox` set up."),
) -> None:
    """Prove, read-only and as the service account itself, that Coiled can work in the project."""

    def go() -> int:
        from coiled_setup.commands import verify as command

        sb = None
        if sandbox:
            from coiled_setup.commands.gcp import start_embedded_sandbox

            sb = start_embedded_sandbox()
        try:
            return command.run(command.VerifyOptions(
                project=project, key_file=key_file, role_id=role_id, region=region, gar=gar,
                instance_service_account=instance_service_account, coiled=not no_coiled, workspace=workspace,
                coiled_server=coiled_server, strict=strict, output=output,
            ))
        finally:
            if sb is not None:
                sb.stop()

    _finish(_guard(go))


@app.command("sandbox")
def sandbox_cmd(
    scenario: Optional[Path] = typer.Option(None, help="YAML or JSON file with the starting state."),
    port: int = typer.Option(0, help="gRPC port for Google (HTTP for Coiled on PORT+1); 0 picks free ports."),
    latency_ms: float = typer.Option(0.0, help="Added latency per call, in milliseconds."),
    fault_rate: float = typer.Option(0.0, help="Share of calls that fail with a transient error (0 to 1)."),
    seed: int = typer.Option(0, help="Seed for the faults."),
    propagation_delay_s: float = typer.Option(0.0, help="Seconds before new accounts and bindings take effect."),
    operation_s: float = typer.Option(0.5, help="Seconds a long-running operation takes."),
    state_dir: Optional[Path] = typer.Option(None, help="Where the operator key is written (default: a temp dir)."),
) -> None:
    """Run a local Google Cloud and Coiled to rehearse against; prints one JSON line when ready."""

    def go() -> int:
        from coiled_setup.commands import sandbox as command

        return command.run(scenario, port, latency_ms, fault_rate, seed, propagation_delay_s, operation_s, state_dir)

    _finish(_guard(go))


def main() -> None:
    app()
