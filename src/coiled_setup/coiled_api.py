"""Coiled's control plane over HTTP (requests, which every run has loaded already through google-auth, and which
keeps connections open between calls), with the retries Coiled's own client makes.

The one place that retries a Coiled call (under the policy of coiled_setup.retry), and that reads HTTP
statuses: callers tell errors apart by their class.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse

# At import, in the thread that imports this module, before any call runs in a worker thread: requests silences
# urllib3's DependencyWarning as it is imported, and a filter added while another thread is inside
# warnings.catch_warnings() (google-auth loading credentials does that) would be lost, printing the warning.
import requests

from coiled_setup import calllog, retry
from coiled_setup.cloud import GIVE_UP_S, Reachability
from coiled_setup.errors import BadInput, UserError

RETRY_STATUSES = {429, 502, 503, 504}  # retried under the retry policy; a silent Coiled has GIVE_UP_S instead
REQUEST_TIMEOUT_S = 30.0
# Coiled's 409 "retry": the official client waits 3 s and repeats, without end; here at most this often.
ACTION_RETRY_S = 3.0
MAX_ACTION_RETRIES = 20


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


class _ActionRequired(Exception):
    """Coiled's 409 {"action_required": ...}: answered by the caller of the retry policy, never retried by it."""

    def __init__(self, action: str, detail: str, message: str):
        super().__init__(message)
        self.action, self.detail, self.message = action, detail, message


class _Silent(Exception):
    """No answer yet, for less than GIVE_UP_S: retried without counting attempts."""


def _causes(e: BaseException):
    """The exception and what it wraps (requests wraps urllib3's, which wrap http.client's and the socket's)."""
    seen = set()
    stack = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        stack += [x.__cause__, x.__context__, *[a for a in getattr(x, "args", ()) if isinstance(a, BaseException)],
                  getattr(x, "reason", None) if isinstance(getattr(x, "reason", None), BaseException) else None]


def _not_http(e: BaseException) -> BaseException | None:
    """The answer that was not HTTP/1.1, if that is what went wrong (a dropped connection is not)."""
    for x in _causes(e):
        if isinstance(x, http.client.HTTPException) and not isinstance(x, OSError):
            return x
    return None


def _reason(e: BaseException) -> str:
    """The innermost cause, in a few words (a refused connection, a timeout, an unknown host)."""
    causes = [x for x in _causes(e) if isinstance(x, OSError) and getattr(x, "errno", None)]
    return str(causes[-1] if causes else e)[:200]


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
        # Answers Coiled's confirmation questions (409 action_required "confirm"): confirm(detail) -> True to
        # repeat the request with ?confirm=1; False or None refuses. It may raise to stop with its own sentence.
        self.confirm = None
        # Reads kept for one more read (backend options, settings, regions): what is in place and the Coiled
        # step's first observation share one answer (the project lock keeps other runs of this tool out meanwhile).
        self._kept: dict[str, object] = {}
        self._session_lock = threading.Lock()
        self._requests = None

    def _session(self):
        """One session for the run: its pool keeps connections open for the next call, whichever thread makes it
        (calls that run together take a connection each; the pool is thread-safe)."""
        with self._session_lock:
            if self._requests is None:
                self._requests = requests.Session()
            return self._requests

    def __repr__(self) -> str:  # never show the token
        return f"Coiled(server={self.server!r}, workspace={self.workspace!r})"

    def _auth(self) -> str:
        return f"ApiToken {self._token}" if "-" in self._token else f"Token {self._token}"

    def _sign(self, request):
        request.headers["Authorization"] = self._auth()
        return request

    def call(self, method: str, path: str, body=None, *, ok_missing: bool = False):
        if method != "GET":
            self._kept.clear()  # before sending: a write whose answer is lost may still have been made
        data = None if body is None else json.dumps(body).encode()
        url = [self.server + path]  # a confirmed request is sent again with ?confirm=1

        def once():
            started = retry.now()
            timer = time.monotonic()
            try:
                answer = attempt(started)
            except _Silent:
                raise
            except Exception as e:
                calllog.record("coiled", method, path, str(getattr(e, "status", "") or type(e).__name__),
                               time.monotonic() - timer)
                raise
            calllog.record("coiled", method, path, "OK", time.monotonic() - timer)
            return answer

        def attempt(started):
            headers = {"Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = "application/json"
            try:
                # The token as `auth`: given any, requests does not put a ~/.netrc login in its place.
                r = self._session().request(method, url[0], data=data, headers=headers, auth=self._sign,
                                            timeout=REQUEST_TIMEOUT_S)
                status, raw = r.status_code, r.content
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
                not_http = _not_http(e)
                if not_http is not None:  # something answered, but not in HTTP/1.1
                    raise _NotHttp(f"Could not reach Coiled at {self.server}: it answers, but not in HTTP/1.1 "
                                   f"({type(not_http).__name__}): check --coiled-server.") from None
                # No answer (a refused, dropped or timed-out connection).
                so_far = self._reach.silent(started, self.server, self.notify)
                if so_far < GIVE_UP_S:
                    raise _Silent() from None
                raise CoiledUnreachable(
                    f"Coiled did not answer at {self.server} for {int(so_far)} s ({_reason(e)}): check your network "
                    "connection, proxy settings (HTTPS_PROXY, NO_PROXY) and --coiled-server, then run again."
                ) from None
            except requests.RequestException as e:  # answered, but not as a server answers (a redirect loop, ...)
                raise CoiledUnreachable(f"Could not reach Coiled at {self.server}: {type(e).__name__}: check "
                                        "--coiled-server.") from None
            self._reach.answered()
            if not 200 <= status < 300:
                if status == 404 and ok_missing:
                    return None
                action, detail = _action_required(status, raw)
                if action:
                    raise _ActionRequired(action, detail, _message(status, raw, method, path)) from None
                cls = (CoiledBusy if status in RETRY_STATUSES else CoiledUnauthorized if status in (401, 403)
                       else CoiledError)
                raise cls(_message(status, raw, method, path), status) from None
            try:
                return json.loads(raw) if raw else None
            except ValueError:
                raise CoiledUnreachable(f"{self.server} answered {method} {path} with something other than JSON: "
                                        "check that --coiled-server points to Coiled.") from None

        waits = 0
        while True:
            try:
                return retry.current().call(once, lambda e: isinstance(e, (CoiledBusy, _NotHttp, _Silent)),
                                            unbounded=lambda e: isinstance(e, _Silent))
            except _ActionRequired as e:
                # Coiled's own client answers these: "retry" by waiting and asking again, "confirm" by asking
                # the user and repeating the request with ?confirm=1.
                if e.action == "retry" and waits < MAX_ACTION_RETRIES:
                    waits += 1
                    retry.sleep(ACTION_RETRY_S)
                    continue
                if e.action == "confirm" and "confirm=1" not in urllib.parse.urlsplit(url[0]).query:
                    if self.confirm is None or not self.confirm(e.detail):
                        raise CoiledError(f"Coiled asked to confirm {method} {path} ({e.detail.rstrip('.')}) and "
                                          "it was not confirmed: nothing was changed by that request.", 409) from None
                    url[0] += ("&" if "?" in url[0] else "?") + "confirm=1"
                    continue
                raise CoiledError(e.message, 409) from None

    # -- routes ----------------------------------------------------------------------------
    def me(self) -> dict:
        return self.call("GET", "/api/v2/user/me")

    def memberships(self) -> list[dict]:
        return self.call("GET", "/api/v2/user/me/memberships") or []

    def _once(self, name: str, read, keep: bool):
        """read(), or the answer kept from the last read of `name` (used once, and only while nothing is
        written); `keep`: keep this answer for the next read."""
        if name in self._kept:
            return self._kept[name] if keep else self._kept.pop(name)
        answer = read()
        if keep:
            self._kept[name] = answer
        return answer

    def backend_options(self, keep: bool = False) -> dict:
        """The workspace's backend options (see _once for `keep`)."""
        return self._once("options", lambda: self.call("GET", f"/api/v1/{self.workspace}/backend_options/") or {},
                          keep)
    def store_credentials(self, keyfile: dict, instance_account: str | None) -> None:
        self.call("POST", f"/api/v2/cloud-credentials/{self.workspace}/gcp",
                  {"credentials": keyfile, "instance_service_account": instance_account})

    def drop_credentials(self) -> None:
        self.call("DELETE", f"/api/v2/cloud-credentials/{self.workspace}/gcp")

    def drop_infrastructure(self) -> None:
        self.call("DELETE", f"/api/v2/setup/account/{self.workspace}/gcp")

    def settings(self, values: dict) -> dict:
        return self.call("PATCH", f"/api/v2/setup/account/{self.workspace}/gcp/settings", values) or {}

    def get_settings(self, keep: bool = False) -> dict | None:
        """The workspace's GCP settings (firewall, public IPs); None when this Coiled has no such read."""
        def read():
            answer = self.call("GET", f"/api/v2/setup/account/{self.workspace}/gcp/settings", ok_missing=True)
            return answer if isinstance(answer, dict) else None
        return self._once("settings", read, keep)

    def set_registry(self, body: dict) -> None:
        self.call("POST", f"/api/v2/user/account/{self.workspace}/registry", body)

    def start_global(self) -> dict:
        return self.call("POST", f"/api/v2/setup/account/{self.workspace}/gcp/global",
                         {"managed": True, "network": None, "scheduler_network_tags": None,
                          "cluster_network_tags": None})

    def get_global(self, keep: bool = False) -> dict:
        return self._once("global", lambda: self.call("GET", f"/api/v2/setup/account/{self.workspace}/gcp/global",
                                                      ok_missing=True) or {}, keep)

    def start_region(self, region: str) -> dict:
        return self.call("POST", f"/api/v2/setup/account/{self.workspace}/gcp/regions",
                         {"default": True, "region": region, "managed": True,
                          # Coiled-managed subnets for workers and schedulers, as `coiled setup gcp` asks for them.
                          "subnets": [{"link": None, "name": None, "for_workers": True, "for_schedulers": True}]})

    def get_regions(self, keep: bool = False) -> list[dict]:
        return self._once("regions", lambda: self.call("GET", f"/api/v2/setup/account/{self.workspace}/gcp/regions",
                                                       ok_missing=True) or [], keep)


def _action_required(status: int, raw: bytes) -> tuple[str | None, str]:
    """Coiled's 409 {"action_required": "confirm" | "retry", "detail": ...}: (action, detail), else (None, "")."""
    if status != 409:
        return None, ""
    try:
        payload = json.loads(raw)
    except ValueError:
        return None, ""
    if not isinstance(payload, dict):
        return None, ""
    return payload.get("action_required"), str(payload.get("detail") or "no details given")


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
