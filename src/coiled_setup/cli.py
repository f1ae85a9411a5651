"""The command line: parses flags and delegates; nothing heavy is imported before a command runs."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from coiled_setup import __version__, typer_lean

EXIT_CODES = ("Exit codes: 0 done (or nothing to do), 1 a step failed, 2 bad input, "
              "3 your account lacks a needed permission, 4 another run is changing the project, "
              "5 an organization policy blocks the setup (nothing was changed), 130 interrupted.")

app = typer.Typer(
    name="coiled-setup",
    help="Set up a Google Cloud project for Coiled in one safe, repeatable command.",
    no_args_is_help=True,
    add_completion=False,  # our own flags below: typer's default to None, which imports pydantic on every run
    pretty_exceptions_enable=False,
    # Plain help: Rich markup would eat "[default: …]" and cut option names at 80 columns.
    rich_markup_mode=None,
)
typer_lean.install()  # typer's pydantic converter only for the values that need it


def _version(value: bool) -> None:
    if value:
        typer.echo(f"coiled-setup {__version__}")
        raise typer.Exit()


def _help(ctx: typer.Context, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        typer.echo(ctx.get_help(), color=ctx.color)
        raise typer.Exit()


COMPLETION_SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")


def _completion(ctx: typer.Context, param: typer.CallbackParam, value: bool) -> None:
    """--show-completion and --install-completion, for the shell running us (else the login shell, $SHELL)."""
    if not value or ctx.resilient_parsing:
        return
    from typer import completion
    from typer._completion_shared import _get_shell_name

    shell = _get_shell_name() or os.path.basename(os.environ.get("SHELL", ""))
    if shell not in COMPLETION_SHELLS:
        typer.echo(f"Completion is available for bash, zsh, fish and PowerShell, not for {shell or 'this shell'}: "
                   "run the command from one of those (or set SHELL to one).", err=True)
        raise typer.Exit(2)
    show = param.name == "show_completion"
    (completion.show_callback if show else completion.install_callback)(ctx, param, shell)


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
    # Our own --help, defaulting to False: typer's defaults to None, and coercing that None builds a pydantic
    # validator, importing pydantic (80 ms, 14 MiB) before every command, `coiled-setup gcp --help` included.
    show_help: bool = typer.Option(False, "--help", callback=_help, is_eager=True, expose_value=False,
                                   help="Show this message and exit."),
    install_completion: bool = typer.Option(False, "--install-completion", callback=_completion, is_eager=True,
                                            expose_value=False, help="Install completion for the current shell."),
    show_completion: bool = typer.Option(False, "--show-completion", callback=_completion, is_eager=True,
                                         expose_value=False, help="Show the completion script for the current shell."),
) -> None:
    """Set up a Google Cloud project for Coiled in one safe, repeatable command."""


def _finish(code: int) -> None:
    raise typer.Exit(code)


def _rehearsing(sandbox: bool, fn, fresh: bool = False) -> int:
    """Runs the command, against the rehearsal sandbox (started in this process) when asked."""
    if not sandbox:
        return fn()
    from coiled_setup import rehearsal

    sb = rehearsal.start(fresh=fresh)
    try:
        return fn()
    finally:
        sb.stop()


VERBOSE_HELP = "Print each Google and Coiled call on stderr (service, method, resource, outcome, time)."
LOG_FILE_HELP = "Append each Google and Coiled call to this file (0600); failures name it."

# Options several commands share, declared once (typer reads them; nothing changes them).
PROJECT = typer.Option(None, metavar="PROJECT", help="Project id [default: GOOGLE_CLOUD_PROJECT, then gcloud's].")
WORKSPACE = typer.Option(None, metavar="SLUG", help="Coiled workspace [default: your only or personal one].")
COILED_SERVER = typer.Option(None, metavar="URL", help="Coiled server [default: from your Coiled login].")
DRY_RUN = typer.Option(False, "--dry-run", help="Show the plan and change nothing.")
YES = typer.Option(False, "--yes", "-y", help="Apply the plan without asking.")
NON_INTERACTIVE = typer.Option(False, "--non-interactive", help="Never prompt (for CI).")
VERBOSE = typer.Option(False, "--verbose", help=VERBOSE_HELP)
LOG_FILE = typer.Option(None, "--log-file", metavar="PATH", help=LOG_FILE_HELP)
OUTPUT = typer.Option("text", metavar="text|json", help="json: one JSON document on stdout, and never a question.")
IMPERSONATE = typer.Option(
    None, metavar="EMAIL", help="Act as this service account [default: gcloud's auth/impersonate_service_account].")


def _start_log(verbose: bool, log_file: Path | None, command: str) -> None:
    if not verbose and log_file is None:
        return
    from coiled_setup import calllog, paths
    from coiled_setup.errors import BadInput

    why = paths.unwritable(log_file) if log_file is not None else None
    if why:
        raise BadInput(f"--log-file {str(log_file)!r} cannot be written, {why}: choose another path.")
    calllog.configure(verbose, log_file, command)


def _guard(fn, command: str, output: str, log: tuple[bool, Path | None] = (False, None)):
    """Expected failures print one sentence and exit with their code, never a traceback; with --output json
    every exit also prints the command's JSON document (once: a run that got far enough printed its own)."""
    from coiled_setup import calllog, report
    from coiled_setup.errors import STEP_FAILED, UserError

    report.reset()
    try:
        _start_log(*log, command)
        return fn()
    except UserError as e:
        from coiled_setup.ui import Ui

        Ui(interactive=False).error(e.message)
        code, error = e.code, e.message
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        code, error = 130, "Interrupted."
    except Exception as e:
        if output != "json":
            raise
        # A bug: its traceback for the report, and still one document for the program reading stdout.
        import traceback

        traceback.print_exc()
        code, error = STEP_FAILED, report.unexpected(e)
    finally:
        calllog.close()
    if output == "json":
        report.emit(command, code, error)
    return code


def _can_ask(non_interactive: bool, output: str) -> bool:
    """Whether the run may ask questions: a JSON consumer is a program (stdout is its document), and without a
    terminal nobody answers."""
    return not non_interactive and output != "json" and sys.stdin.isatty()


def _given_path(path: Path | None) -> str | None:
    """A path flag for refuse_empty: typer reads an empty value as the current directory."""
    return None if path is None or str(path) not in ("", ".") else ""


def _impersonate(email: str | None) -> None:
    """--impersonate-service-account, passed on as gcloud's own variable for the same property."""
    if email:
        from coiled_setup.cloud import IMPERSONATE_VAR

        os.environ[IMPERSONATE_VAR] = email


@app.command(epilog=EXIT_CODES, short_help="Set up a project for Coiled, then configure Coiled.")
def gcp(
    ctx: typer.Context,
    project: Optional[str] = PROJECT,
    workspace: Optional[str] = WORKSPACE,
    region: str = typer.Option("us-east1", metavar="REGION", help="Region for clusters and the registry."),
    zone: Optional[str] = typer.Option(None, metavar="ZONE", help="Zone inside the region [default: REGION-c]."),
    service_account: Optional[str] = typer.Option(None, metavar="ID|EMAIL",
                                                  help="Account id or email for Coiled [default: coiled]."),
    key_file: Optional[Path] = typer.Option(
        None, metavar="PATH", help="Key file to reuse, or where to write a new key [default: "
                                   "~/.config/coiled-setup/keys/PROJECT/ACCOUNT.json]."),
    no_local_key: bool = typer.Option(False, "--no-local-key", help="Keep a new key in memory only, for the upload."),
    role_id: str = typer.Option("coiled", metavar="ROLE_ID", help="Id of the custom role."),
    no_gar: bool = typer.Option(False, "--no-gar", help="Skip Artifact Registry (use another registry)."),
    registry_regions: Optional[str] = typer.Option(
        None, metavar="R1,R2", help="Regions that each get Coiled's registry repository [default: --region]."),
    no_bigquery: bool = typer.Option(False, "--no-bigquery",
                                     help="Leave the BigQuery API off (Coiled's cluster logs go to Cloud Logging "
                                          "only)."),
    allow_log_sink_exception: bool = typer.Option(
        False, "--allow-log-sink-exception",
        help="When domain restricted sharing would refuse Coiled's log sink its grant, lift it for the project "
             "while Coiled sets up, then restore the project's policy."),
    instance_service_account: Optional[str] = typer.Option(
        None, metavar="EMAIL", help="Existing account for cluster instances [default: none]."),
    create_instance_service_account: bool = typer.Option(
        False, "--create-instance-service-account", help="Create a least-privilege account for instances."),
    no_instance_service_account: bool = typer.Option(
        False, "--no-instance-service-account", help="Instances use no separate account (removes one Coiled holds)."),
    preemptible: bool = typer.Option(True, "--preemptible/--no-preemptible", help="Use preemptible workers."),
    firewall_cidr: Optional[str] = typer.Option(
        None, metavar="CIDR", help="Network allowed to reach the schedulers; the default is anyone "
                                   "[default: 0.0.0.0/0]."),
    firewall_ports: str = typer.Option("22,8786,8787", metavar="PORTS", help="Scheduler ports to open."),
    no_upload: bool = typer.Option(False, "--no-upload", help="Do not send anything to Coiled."),
    write_dask_config: bool = typer.Option(
        False, "--write-dask-config",
        help="Also write coiled.backend-options (region_name, zone_name, spot, ingress) into your dask config "
             "coiled.yaml: only older coiled clients apply it; the workspace's settings are what take effect."),
    coiled_server: Optional[str] = COILED_SERVER,
    wait_timeout: float = typer.Option(600.0, metavar="SECONDS",
                                       help="Longest wait for Google to propagate changes."),
    allow_privileged_key: bool = typer.Option(
        False, "--allow-privileged-key",
        help="Let Coiled's account be yours or one with owner, editor or IAM-admin roles (refused otherwise)."),
    dry_run: bool = DRY_RUN,
    yes: bool = YES,
    non_interactive: bool = NON_INTERACTIVE,
    verbose: bool = VERBOSE,
    log_file: Optional[Path] = LOG_FILE,
    output: str = OUTPUT,
    sandbox: bool = typer.Option(False, "--sandbox", help="Rehearse against a local sandbox, not Google."),
    sandbox_reset: bool = typer.Option(False, "--sandbox-reset", help="With --sandbox: start from a fresh project."),
    print_operator_roles: bool = typer.Option(
        False, "--print-operator-roles",
        help="Print the roles your own account needs for this run (with its other flags), and change nothing."),
    export: Optional[tuple[str, Path]] = typer.Option(
        None, metavar="terraform DIR|gcloud FILE",
        help="Write this run's plan as Terraform or as a gcloud script, and change nothing."),
    terraform_key: bool = typer.Option(False, "--terraform-key",
                                       help="With --export terraform: the key too (its private half in the state)."),
    impersonate_service_account: Optional[str] = IMPERSONATE,
) -> None:
    """Create the service account, key, role, binding and registry Coiled needs, then configure Coiled."""
    _impersonate(impersonate_service_account)

    def go() -> int:
        from coiled_setup import context
        from coiled_setup.commands import gcp as command
        from coiled_setup.options import (
            DEFAULT_ACCOUNT_ID,
            OPEN_CIDR,
            Options,
            parse_ports,
            parse_regions,
            refuse_empty,
            region_error,
        )

        if print_operator_roles:
            return command.print_operator_roles(project, gar=not no_gar, listing=not service_account)

        refuse_empty({"--project": project, "--workspace": workspace, "--zone": zone, "--region": region,
                      "--service-account": service_account, "--instance-service-account": instance_service_account,
                      "--firewall-cidr": firewall_cidr, "--coiled-server": coiled_server, "--role-id": role_id,
                      "--firewall-ports": firewall_ports, "--registry-regions": registry_regions,
                      "--key-file": _given_path(key_file)})
        # A flag not given keeps what is in place; one given changes it.
        given = {name for name in ("service_account", "firewall_cidr", "firewall_ports", "region", "zone",
                                   "preemptible", "instance_service_account", "create_instance_service_account",
                                   "no_instance_service_account")
                 if ctx.get_parameter_source(name).name != "DEFAULT"}
        if given & {"instance_service_account", "create_instance_service_account", "no_instance_service_account"}:
            given.add("instance")
        if ctx.get_parameter_source("no_gar").name != "DEFAULT":
            given.add("gar")
        use_region, use_zone = region, zone
        if "region" not in given:
            # gcloud's compute/region and compute/zone are the defaults (as Coiled's own CLI has it), when usable.
            gregion = os.environ.get("CLOUDSDK_COMPUTE_REGION") or context.gcloud_property("compute", "region")
            use_region = gregion if gregion and not region_error(gregion, not no_gar) else region
        if "zone" not in given:
            gzone = os.environ.get("CLOUDSDK_COMPUTE_ZONE") or context.gcloud_property("compute", "zone")
            use_zone = gzone if gzone and gzone.startswith(f"{use_region}-") else None
        opts = Options(
            project=project or "", workspace=workspace, region=use_region, zone=use_zone,
            service_account=service_account or DEFAULT_ACCOUNT_ID, key_file=key_file, no_local_key=no_local_key,
            role_id=role_id, gar=not no_gar, bigquery=not no_bigquery,
            allow_log_sink_exception=allow_log_sink_exception, instance_service_account=instance_service_account,
            create_instance_service_account=create_instance_service_account,
            no_instance_service_account=no_instance_service_account, preemptible=preemptible,
            firewall_cidr=firewall_cidr or OPEN_CIDR, firewall_ports=parse_ports(firewall_ports),
            upload=not no_upload, write_dask_config=write_dask_config, dry_run=dry_run, yes=yes,
            interactive=_can_ask(non_interactive, output), output=output,
            wait_timeout=wait_timeout, coiled_server=coiled_server, explicit=given,
            allow_privileged_key=allow_privileged_key, registry_regions=parse_regions(registry_regions or ""),
        )
        if export is not None:
            opts.dry_run = True  # an export changes nothing
        return _rehearsing(sandbox or sandbox_reset, lambda: command.run(opts, export, terraform_key),
                           fresh=sandbox_reset)

    _finish(_guard(go, "gcp", output, (verbose, log_file)))


@app.command("rotate-key", epilog=EXIT_CODES, short_help="Give Coiled a new key, then delete the old one.")
def rotate_key(
    project: Optional[str] = PROJECT,
    workspace: Optional[str] = WORKSPACE,
    service_account: Optional[str] = typer.Option(None, metavar="EMAIL",
                                                  help="Account whose key rotates [default: the one Coiled holds]."),
    key_file: Optional[Path] = typer.Option(
        None, metavar="PATH", help="Where the new key is written [default: the key file gcp wrote, if any]."),
    max_age: Optional[float] = typer.Option(
        None, metavar="DAYS", help="Rotate only when Coiled's key is older than this (for a scheduler)."),
    coiled_server: Optional[str] = COILED_SERVER,
    wait_timeout: float = typer.Option(600.0, metavar="SECONDS",
                                       help="Longest wait for Google to accept the new key."),
    dry_run: bool = DRY_RUN,
    yes: bool = YES,
    non_interactive: bool = NON_INTERACTIVE,
    verbose: bool = VERBOSE,
    log_file: Optional[Path] = LOG_FILE,
    output: str = OUTPUT,
    sandbox: bool = typer.Option(False, "--sandbox", help="Rotate in the sandbox that `gcp --sandbox` set up."),
    impersonate_service_account: Optional[str] = IMPERSONATE,
) -> None:
    """Create a new key for Coiled's account, check that Google accepts it, hand it to Coiled, and only then delete
    the old key (and older ones coiled-setup made; never a key someone else created)."""
    _impersonate(impersonate_service_account)

    def go() -> int:
        from coiled_setup.commands import rotate as command
        from coiled_setup.options import Options, check_account, output_error, refuse_empty

        refuse_empty({"--project": project, "--workspace": workspace, "--service-account": service_account,
                      "--coiled-server": coiled_server,
                      "--key-file": _given_path(key_file)})
        wrong = output_error(output)
        if wrong:
            from coiled_setup.errors import BadInput

            raise BadInput(wrong)
        opts = Options(project=project or "", workspace=workspace, key_file=key_file, max_age=max_age,
                       coiled_server=coiled_server, wait_timeout=wait_timeout, dry_run=dry_run, yes=yes,
                       interactive=_can_ask(non_interactive, output), output=output,
                       explicit={"service_account"} if service_account else set())
        if service_account:
            if project:
                check_account(service_account, project)
            opts.service_account = service_account
        return _rehearsing(sandbox, lambda: command.run(opts))

    _finish(_guard(go, "rotate-key", output, (verbose, log_file)))


@app.command(epilog=EXIT_CODES, short_help="Remove what coiled-setup created for Coiled in a project.")
def teardown(
    ctx: typer.Context,
    project: Optional[str] = PROJECT,
    workspace: Optional[str] = WORKSPACE,
    service_account: Optional[str] = typer.Option(None, metavar="ID|EMAIL",
                                                  help="Coiled's account [default: the one Coiled holds, else the "
                                                       "one gcp set up]."),
    role_id: str = typer.Option("coiled", metavar="ROLE_ID", help="Id of the custom role [default: as gcp "
                                                                  "recorded, else coiled]."),
    delete_repository: bool = typer.Option(False, "--delete-repository",
                                           help="Delete the registry repository too, with every image in it."),
    no_coiled: bool = typer.Option(False, "--no-coiled", help="Leave Coiled's workspace as it is."),
    coiled_server: Optional[str] = COILED_SERVER,
    wait_timeout: float = typer.Option(600.0, metavar="SECONDS", help="Longest wait for Google's operations."),
    dry_run: bool = DRY_RUN,
    yes: bool = YES,
    non_interactive: bool = NON_INTERACTIVE,
    verbose: bool = VERBOSE,
    log_file: Optional[Path] = LOG_FILE,
    output: str = OUTPUT,
    sandbox: bool = typer.Option(False, "--sandbox", help="Tear down in the sandbox that `gcp --sandbox` set up."),
    impersonate_service_account: Optional[str] = IMPERSONATE,
) -> None:
    """Remove what coiled-setup created for Coiled: the workspace's credentials, the bindings, the custom roles,
    the accounts and their keys (and the repository only with --delete-repository). APIs stay enabled, and
    nothing coiled-setup did not create is touched."""
    _impersonate(impersonate_service_account)

    def go() -> int:
        from coiled_setup.commands import teardown as command
        from coiled_setup.options import (
            DEFAULT_ACCOUNT_ID,
            Options,
            check_account,
            output_error,
            refuse_empty,
            role_id_error,
        )

        refuse_empty({"--project": project, "--workspace": workspace, "--service-account": service_account,
                      "--coiled-server": coiled_server, "--role-id": role_id})
        for wrong in (output_error(output), role_id_error(role_id)):
            if wrong:
                from coiled_setup.errors import BadInput

                raise BadInput(wrong)
        given = {name for name in ("service_account", "role_id")
                 if ctx.get_parameter_source(name).name != "DEFAULT"}
        opts = Options(project=project or "", workspace=workspace,
                       service_account=service_account or DEFAULT_ACCOUNT_ID, role_id=role_id,
                       delete_repository=delete_repository, upload=not no_coiled,
                       coiled_server=coiled_server, wait_timeout=wait_timeout, dry_run=dry_run, yes=yes,
                       interactive=_can_ask(non_interactive, output), output=output,
                       explicit=given)
        if service_account and project:
            check_account(service_account, project)
        return _rehearsing(sandbox, lambda: command.run(opts))

    _finish(_guard(go, "teardown", output, (verbose, log_file)))


@app.command(short_help="A report of what coiled-setup would create and why, for a security reviewer.")
def review(
    project: Optional[str] = typer.Option(None, metavar="PROJECT", help="Read this project (read-only) to say what "
                                                                        "exists [default: offline, no project]."),
    format: str = typer.Option("markdown", "--format", metavar="markdown|json", help="Markdown (for a ticket or a "
                                                                                     "pull request) or JSON."),
    output_file: Optional[Path] = typer.Option(None, metavar="PATH", help="Write the report here [default: stdout]."),
) -> None:
    """Each permission of the bundled roles and what Coiled uses it for, then each resource, binding, API and key a
    run would create; changes nothing."""

    def go() -> int:
        from coiled_setup.commands import review as command

        return command.run(command.ReviewOptions(project=project, format=format, output_file=output_file))

    _finish(_guard(go, "review", "json" if format == "json" and output_file is None else "text"))


VERIFY_EXIT_CODES = ("Exit codes: 0 every check passed (warnings allowed unless --strict), 1 a check failed, "
                     "2 bad input (for example an unknown project), 130 interrupted.")


@app.command(epilog=VERIFY_EXIT_CODES, short_help="Check, read-only, that Coiled can work in a project.")
def verify(
    project: Optional[str] = PROJECT,
    key_file: Optional[Path] = typer.Option(None, metavar="PATH", help="The Coiled account's key file [default: the "
                                                                       "one coiled-setup gcp wrote for the project]."),
    role_id: Optional[str] = typer.Option(None, metavar="ROLE_ID",
                                          help="Id of the custom role [default: as gcp recorded, else coiled]."),
    region: Optional[str] = typer.Option(None, metavar="REGION", help="Region of the clusters and the registry "
                                                                      "[default: as gcp recorded, else Coiled's, else "
                                                                      "us-east1]."),
    gar: Optional[bool] = typer.Option(None, "--gar/--no-gar", help="Check Artifact Registry [default: as gcp "
                                                                    "recorded, else on]."),
    bigquery: Optional[bool] = typer.Option(None, "--bigquery/--no-bigquery", help="Check that the BigQuery API is "
                                                                               "on [default: as gcp recorded, else "
                                                                               "on]."),
    instance_service_account: Optional[str] = typer.Option(
        None, metavar="EMAIL", help="Account for cluster instances [default: as gcp recorded, else Coiled's]."),
    workspace: Optional[str] = WORKSPACE,
    no_coiled: bool = typer.Option(False, "--no-coiled", help="Skip the checks of what Coiled holds."),
    coiled_server: Optional[str] = COILED_SERVER,
    strict: bool = typer.Option(False, "--strict", help="Fail on warnings too."),
    verbose: bool = VERBOSE,
    log_file: Optional[Path] = LOG_FILE,
    output: str = typer.Option("text", metavar="text|json", help="json: one JSON document on stdout."),
    sandbox: bool = typer.Option(False, "--sandbox", help="Check the sandbox that `gcp --sandbox` set up."),
    impersonate_service_account: Optional[str] = IMPERSONATE,
) -> None:
    """Prove, read-only and as the service account itself, that Coiled can work in the project."""
    _impersonate(impersonate_service_account)

    def go() -> int:
        from coiled_setup.commands import verify as command
        from coiled_setup.options import refuse_empty

        refuse_empty({"--project": project, "--instance-service-account": instance_service_account,
                      "--workspace": workspace, "--coiled-server": coiled_server, "--region": region,
                      "--role-id": role_id,
                      "--key-file": _given_path(key_file)})
        return _rehearsing(sandbox, lambda: command.run(command.VerifyOptions(
            project=project, key_file=key_file, role_id=role_id, region=region, gar=gar, bigquery=bigquery,
            instance_service_account=instance_service_account, coiled=not no_coiled, workspace=workspace,
            coiled_server=coiled_server, strict=strict, output=output,
        )))

    _finish(_guard(go, "verify", output, (verbose, log_file)))


@app.command(epilog=EXIT_CODES, short_help="Show the quotas that bound a cluster, and ask Google for more.")
def quotas(
    project: Optional[str] = PROJECT,
    region: Optional[str] = typer.Option(None, metavar="REGION",
                                         help="Read this region only [default: the cluster region and registry "
                                              "regions gcp recorded, else us-east1]."),
    request: list[str] = typer.Option([], "--request", metavar="QUOTA=N",
                                      help="Ask Google for this limit in one region (--region, else the cluster "
                                           "region only): cpus, ssd_gb or addresses (repeatable)."),
    email: Optional[str] = typer.Option(None, metavar="ADDRESS", help="Contact email for a request [default: your "
                                                                       "account]."),
    justification: Optional[str] = typer.Option(None, metavar="TEXT", help="Why, for Google's review."),
    enable_api: bool = typer.Option(False, "--enable-api", help="Enable the Cloud Quotas API first."),
    non_interactive: bool = typer.Option(False, "--non-interactive", help="Never prompt (and never request unless "
                                                                          "--request says so)."),
    output: str = typer.Option("text", metavar="text|json", help="json: one JSON document on stdout."),
    sandbox: bool = typer.Option(False, "--sandbox", help="Use the sandbox that `gcp --sandbox` set up."),
) -> None:
    """Show the regional quotas that bound a Coiled cluster, in workers; with --request, ask Google for more."""

    def go() -> int:
        from coiled_setup.commands import quotas as command
        from coiled_setup.options import refuse_empty

        refuse_empty({"--project": project, "--region": region, "--email": email, "--justification": justification})
        return _rehearsing(sandbox, lambda: command.run(command.QuotasOptions(
            project=project, region=region, requests=list(request), email=email, justification=justification,
            enable_api=enable_api, interactive=_can_ask(non_interactive, output),
            output=output)))

    _finish(_guard(go, "quotas", output))


@app.command("sandbox", short_help="Run a local Google Cloud and Coiled to rehearse against.")
def sandbox_cmd(
    scenario: Optional[Path] = typer.Option(None, metavar="PATH", help="YAML or JSON file with the starting state "
                                                                       "[default: one demo project]."),
    port: int = typer.Option(0, metavar="PORT",
                             help="gRPC port for Google (HTTP for Coiled on PORT+1); 0 picks free ports."),
    latency_ms: float = typer.Option(0.0, metavar="MS", help="Added latency per call, in milliseconds."),
    fault_rate: float = typer.Option(0.0, metavar="SHARE",
                                     help="Share of calls that fail with a transient error (0 to 1)."),
    seed: int = typer.Option(0, metavar="N", help="Seed for the faults."),
    propagation_delay_s: float = typer.Option(0.0, metavar="SECONDS",
                                              help="Seconds before new accounts, bindings and keys take effect."),
    operation_s: float = typer.Option(0.5, metavar="SECONDS", help="Seconds a long-running operation takes."),
    state_dir: Optional[Path] = typer.Option(
        None, metavar="DIR", help="Where the operator key is written [default: a temporary directory]."),
) -> None:
    """Run a local Google Cloud and Coiled to rehearse against; prints one JSON line when ready."""

    def go() -> int:
        from coiled_setup.commands import sandbox as command

        return command.run(scenario, port, latency_ms, fault_rate, seed, propagation_delay_s, operation_s, state_dir)

    _finish(_guard(go, "sandbox", "text"))


class _Quiet:
    """A stream that goes quiet once its reader has gone (`| head`): a setup under way is not stopped half done by
    the next line it prints."""

    def __init__(self, stream):
        self._stream = stream
        self._gone = False

    def _guard(self, fn, *args):
        if not self._gone:
            try:
                return fn(*args)
            except BrokenPipeError:
                self._gone = True
            except OSError as e:
                if e.errno != errno.EPIPE:
                    raise
                self._gone = True
        return None

    def write(self, text):
        self._guard(self._stream.write, text)
        return len(text)

    def flush(self):
        self._guard(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def entry() -> None:
    """The program itself (the console script, `python -m coiled_setup`): main(), then it leaves at once.

    Tearing the interpreter down after the answer is out takes about a tenth of a second (the Google
    libraries' modules, gRPC's threads) and decides nothing: the journal, the key file and the lock are
    written and released before, every thread of ours is a daemon, and output is flushed here."""
    if sys.stdout is not None:
        sys.stdout = _Quiet(sys.stdout)
    if sys.stderr is not None:
        sys.stderr = _Quiet(sys.stderr)
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    if not isinstance(code, int):
        if code is not None and sys.stderr is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: the program was started with that stream closed
                stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code)


def main() -> None:
    from coiled_setup import report

    argv = sys.argv[1:]
    report.reset()
    if "_COILED_SETUP_COMPLETE" in os.environ:
        # The shell asks for completions: typer's own protocol, which its completion scripts speak.
        from typer._completion_classes import completion_init

        completion_init()
    if not report.wants_json(argv):
        app(prog_name="coiled-setup")
        return
    # Usage errors are raised before a command runs: caught here, so they too print the JSON document.
    try:
        from typer._click.exceptions import ClickException  # typer carrying its own click
    except ImportError:
        from click.exceptions import ClickException
    try:
        code = app(prog_name="coiled-setup", standalone_mode=False)
    except ClickException as e:
        e.show()
        code = e.exit_code
        report.emit(report.command_of(argv), code, e.format_message())
    except typer.Abort:  # end of input at a prompt
        code = 130
        report.emit(report.command_of(argv), code, "Interrupted.")
    sys.exit(code if isinstance(code, int) else 0)
