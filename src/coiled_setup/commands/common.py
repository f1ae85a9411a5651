"""What the commands share: connecting to Google as the operator, and to Coiled's workspace."""

from __future__ import annotations

import os
import sys

from coiled_setup import context
from coiled_setup.cloud import CloudError, Google, NoCredentials, Transient, Unreachable
from coiled_setup.coiled_api import Coiled, CoiledUnauthorized
from coiled_setup.concurrency import run_all
from coiled_setup.errors import BadInput, UserError
from coiled_setup.remedies import explain


def notice(text: str) -> None:
    """A line on stderr while waiting (stdout may carry a JSON document)."""
    print(text, file=sys.stderr, flush=True)


def connect_google(notify=notice) -> Google:
    """The operator's Google, its credentials accepted and its endpoint answering (refused credentials are bad
    input, told at once; a Google that does not answer is told within seconds, and given up on in 30)."""
    try:
        g = Google.from_environment()
    except NoCredentials as e:
        raise BadInput(no_credentials_sentence(str(e))) from None
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


def coiled_client(server_flag: str | None, workspace_flag: str | None, skip_flag: str) -> tuple[Coiled, str | None]:
    """A Coiled client for the user's login, and the workspace asked for (if any)."""
    token, server, workspace = context.coiled_login(server_flag, workspace_flag)
    if not token:
        raise BadInput(f"No Coiled login found: run `coiled login`, set DASK_COILED__TOKEN, or pass {skip_flag}.")
    c = Coiled(server, token)
    c.notify = notice
    return c, workspace


def workspace_reads(c: Coiled) -> tuple[dict, list]:
    """Who the user is and the workspaces they belong to: two independent reads, made together."""
    try:
        me, memberships = run_all([c.me, c.memberships])
    except CoiledUnauthorized as e:
        raise BadInput(e.message) from None
    return me, memberships


def choose_workspace(c: Coiled, wanted: str | None, ask=None, reads: tuple[dict, list] | None = None) -> str:
    """The workspace to use: the one asked for, else the only one, else the personal one, else `ask`'s pick.

    `reads` are workspace_reads(c) when they were already made."""
    me, memberships = reads if reads is not None else workspace_reads(c)
    slugs = [m.get("account", {}).get("slug") for m in memberships]
    if wanted:
        if wanted not in slugs:
            raise BadInput(f"Coiled workspace {wanted!r} is not one of yours ({', '.join(slugs) or 'none'}): "
                           "pass --workspace with one of them.")
        choice = wanted
    elif len(slugs) == 1:
        choice = slugs[0]
    elif me.get("username") in slugs:
        choice = me["username"]
    elif ask is not None and slugs:
        choice = ask(slugs)
    else:
        raise BadInput(f"You belong to several Coiled workspaces ({', '.join(slugs)}): pass --workspace.")
    c.workspace = choice
    return choice
