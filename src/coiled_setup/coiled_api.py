"""Coiled's control plane over plain HTTP, with the retries Coiled's own client makes.

The one place that retries a Coiled call (under the policy of coiled_setup.retry), and that reads HTTP
statuses: callers tell errors apart by their class.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request

from coiled_setup import retry
from coiled_setup.cloud import GIVE_UP_S, Reachability
from coiled_setup.errors import BadInput, UserError

RETRY_STATUSES = {429, 502, 503, 504}  # retried under the retry policy; a silent Coiled has GIVE_UP_S instead
REQUEST_TIMEOUT_S = 30.0


class CoiledError(UserError):
    """Coiled refused or failed a call; `status` is its HTTP status (0: no HTTP answer)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class CoiledUnauthorized(CoiledError):
    """The token was refused (401) or does not reach this (403)."""


class CoiledBusy(CoiledError):
    """Coiled answered 429 or a gateway error, the same call retried until the policy gave up."""


class CoiledUnreachable(CoiledError):
    """No answer from Coiled as Coiled answers: no connection, not HTTP/1.1, or not JSON (the network or
    --coiled-server is to check)."""


class _NotHttp(CoiledUnreachable):
    """Something answered, but not in HTTP/1.1 (retried: a proxy may be restarting)."""


class _Silent(Exception):
    """No answer yet, for less than GIVE_UP_S: retried without counting attempts."""


class Coiled:
    def __init__(self, server: str, token: str, workspace: str | None = None):
        url = urllib.parse.urlsplit(server)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise BadInput(f"The Coiled server {server!r} is not an http(s) URL: check --coiled-server, "
                           "DASK_COILED__SERVER or coiled.server in your dask config.")
        self.server = server.rstrip("/")
        self._token = token
        self.workspace = workspace
        # Hears one line now and then while Coiled does not answer (None: silent).
        self.notify = None
        self._reach = Reachability("Coiled")
        # Backend options kept for one more read: what is in place and the Coiled step's first observation
        # share one answer (the project lock keeps other runs of this tool out meanwhile).
        self._options: dict | None = None

    def __repr__(self) -> str:  # never show the token
        return f"Coiled(server={self.server!r}, workspace={self.workspace!r})"

    def _auth(self) -> str:
        return f"ApiToken {self._token}" if "-" in self._token else f"Token {self._token}"

    def call(self, method: str, path: str, body=None, *, ok_missing: bool = False):
        if method != "GET":
            self._options = None  # before sending: a write whose answer is lost may still have been made
        url = self.server + path
        data = None if body is None else json.dumps(body).encode()

        def once():
            started = retry.now()
            req = urllib.request.Request(url, data=data, method=method)
            req.add_header("Authorization", self._auth())
            req.add_header("Accept", "application/json")
            if data is not None:
                req.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as r:
                    raw = r.read()
                self._reach.answered()
            except urllib.error.HTTPError as e:
                self._reach.answered()
                raw = e.read()
                if e.code == 404 and ok_missing:
                    return None
                cls = (CoiledBusy if e.code in RETRY_STATUSES else CoiledUnauthorized if e.code in (401, 403)
                       else CoiledError)
                raise cls(_message(e.code, raw, method, path), e.code) from None
            except (urllib.error.URLError, OSError) as e:  # no answer (a dropped connection included)
                so_far = self._reach.silent(started, self.server, self.notify)
                if so_far < GIVE_UP_S:
                    raise _Silent() from None
                reason = getattr(e, "reason", e)
                raise CoiledUnreachable(
                    f"Coiled did not answer at {self.server} for {int(so_far)} s ({reason}): check your network "
                    "connection, proxy settings (HTTPS_PROXY, NO_PROXY) and --coiled-server, then run again."
                ) from None
            except http.client.HTTPException as e:  # something answered, but not in HTTP/1.1
                raise _NotHttp(f"Could not reach Coiled at {self.server}: it answers, but not in HTTP/1.1 "
                               f"({type(e).__name__}): check --coiled-server.") from None
            try:
                return json.loads(raw) if raw else None
            except ValueError:
                raise CoiledUnreachable(f"{self.server} answered {method} {path} with something other than JSON: "
                                        "check that --coiled-server points to Coiled.") from None

        return retry.current().call(once, lambda e: isinstance(e, (CoiledBusy, _NotHttp, _Silent)),
                                    unbounded=lambda e: isinstance(e, _Silent))

    # -- routes ----------------------------------------------------------------------------
    def me(self) -> dict:
        return self.call("GET", "/api/v2/user/me")

    def memberships(self) -> list[dict]:
        return self.call("GET", "/api/v2/user/me/memberships") or []

    def backend_options(self, keep: bool = False) -> dict:
        """The workspace's backend options; `keep`: the next read answers the same without asking again
        (once, and only while nothing is written)."""
        if self._options is not None:
            options, self._options = self._options, None
            return options
        options = self.call("GET", f"/api/v1/{self.workspace}/backend_options/") or {}
        if keep:
            self._options = options
        return options

    def store_credentials(self, keyfile: dict, instance_account: str | None) -> None:
        self.call("POST", f"/api/v2/cloud-credentials/{self.workspace}/gcp",
                  {"credentials": keyfile, "instance_service_account": instance_account})

    def drop_credentials(self) -> None:
        self.call("DELETE", f"/api/v2/cloud-credentials/{self.workspace}/gcp")

    def drop_infrastructure(self) -> None:
        self.call("DELETE", f"/api/v2/setup/account/{self.workspace}/gcp")

    def settings(self, values: dict) -> None:
        self.call("PATCH", f"/api/v2/setup/account/{self.workspace}/gcp/settings", values)

    def set_registry(self, body: dict) -> None:
        self.call("POST", f"/api/v2/user/account/{self.workspace}/registry", body)

    def start_global(self) -> dict:
        return self.call("POST", f"/api/v2/setup/account/{self.workspace}/gcp/global",
                         {"managed": True, "network": None, "scheduler_network_tags": None,
                          "cluster_network_tags": None})

    def get_global(self) -> dict:
        return self.call("GET", f"/api/v2/setup/account/{self.workspace}/gcp/global", ok_missing=True) or {}

    def start_region(self, region: str) -> dict:
        return self.call("POST", f"/api/v2/setup/account/{self.workspace}/gcp/regions",
                         {"default": True, "region": region, "managed": True, "subnets": []})

    def get_regions(self) -> list[dict]:
        return self.call("GET", f"/api/v2/setup/account/{self.workspace}/gcp/regions", ok_missing=True) or []


def _message(status: int, raw: bytes, method: str, path: str) -> str:
    detail = ""
    try:
        payload = json.loads(raw)
        detail = payload.get("detail", "") if isinstance(payload, dict) else ""
    except ValueError:
        pass
    if status in (401, 403) and path.startswith("/api/v2/user/me"):
        return ("Coiled did not accept your token: run `coiled login` (or set DASK_COILED__TOKEN) "
                "and try again.")
    if status in RETRY_STATUSES:
        return (f"Coiled kept answering {status} to {method} {path}" + (f" ({detail.rstrip('.')})" if detail else "")
                + ": it is busy or restarting; run again in a few minutes.")
    text = f"Coiled answered {status} to {method} {path}"
    return f"{text}: {detail}" if detail else f"{text}."
