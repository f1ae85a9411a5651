"""The HTTP side of the sandbox: the OAuth token endpoint, Coiled's routes, and /_sandbox."""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from coiled_setup.sandbox import snapshot
from coiled_setup.sandbox.auth import GrantError, generate_access_token, grant_token
from coiled_setup.sandbox.world import DEFAULT_SETTINGS, World

KEY_FIELDS = (
    "type", "project_id", "private_key_id", "private_key", "client_email", "client_id",
    "auth_uri", "token_uri", "auth_provider_x509_cert_url", "client_x509_cert_url",
)
REGISTRY_TYPES = {"gar", "ecr", "dockerhub"}


# IAM Credentials, as google-auth's impersonated credentials call it.
IMPERSONATE = re.compile(r"^/v1/projects/-/serviceAccounts/([^/:]+):generateAccessToken$")

class HttpError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Route:
    def __init__(self, method: str, pattern: str, fn, writes: bool = False):
        self.method = method
        self.pattern = pattern
        self.regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")
        self.fn = fn
        self.writes = writes


class CoiledApi:
    """Coiled's control-plane routes, over the shared world."""

    def __init__(self, world: World, required_permissions: list[str]):
        self.world = world
        self.required = required_permissions
        self.routes = [
            Route("GET", "/api/v2/user/me", self.me),
            Route("GET", "/api/v2/user/me/memberships", self.memberships),
            Route("POST", "/api/v2/cloud-credentials/{ws}/gcp", self.store_credentials, True),
            Route("DELETE", "/api/v2/cloud-credentials/{ws}/gcp", self.drop_credentials, True),
            Route("PATCH", "/api/v2/setup/account/{ws}/gcp/settings", self.settings, True),
            Route("GET", "/api/v2/setup/account/{ws}/gcp/settings", self.get_settings),
            Route("DELETE", "/api/v2/setup/account/{ws}/gcp", self.drop_infra, True),
            Route("POST", "/api/v2/setup/account/{ws}/gcp/global", self.start_global, True),
            Route("GET", "/api/v2/setup/account/{ws}/gcp/global", self.get_global),
            Route("POST", "/api/v2/setup/account/{ws}/gcp/regions", self.start_region, True),
            Route("GET", "/api/v2/setup/account/{ws}/gcp/regions", self.get_regions),
            Route("POST", "/api/v2/user/account/{ws}/registry", self.set_registry, True),
            Route("GET", "/api/v1/{ws}/backend_options/", self.backend_options),
        ]

    # -- helpers -----------------------------------------------------------------------------
    def user(self, authorization: str | None):
        """The user behind the header. API tokens (`<id>-<secret>`) go with the `ApiToken` scheme,
        legacy tokens (no dash) with `Token`; either under the other scheme is unknown to Coiled."""
        if authorization:
            scheme, _, token = authorization.partition(" ")
            expected = "ApiToken" if "-" in token else "Token"
            if scheme == expected and token in self.world.coiled.users:
                return self.world.coiled.users[token]
        raise HttpError(401, "Invalid token.")

    @staticmethod
    def obj(body) -> dict:
        """The JSON body as an object ({} when there is none); 400 for any other JSON value."""
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise HttpError(400, "The body must be a JSON object.")
        return body

    def workspace(self, user, slug: str):
        """The workspace of a route: 404 when there is none of that slug, 403 when the user is not a member
        (worded as Coiled words it: the official client turns "aren't a member" into a PermissionsError)."""
        ws = self.world.coiled.workspaces.get(slug)
        if ws is None:
            raise HttpError(404, "Not found.")
        if slug not in user.workspaces:
            raise HttpError(403, f"You aren't a member of the {slug} workspace.")
        return ws

    def _component(self, comp: dict | None, ws, region: str | None) -> dict | None:
        """Settles a component whose work time has passed: created, or error with the reason."""
        if comp is None:
            return None
        if comp["state"] == "in progress" and time.monotonic() >= comp["ready_at"]:
            reason = self._missing(ws, region)
            comp["state"] = "error" if reason else "created"
            comp["reason"] = reason
        return {"state": comp["state"], "reason": comp.get("reason")}

    def _missing(self, ws, region: str | None) -> str | None:
        """Why Coiled could not work with the stored credentials, as it would find out."""
        w = self.world
        creds = ws.credentials or {}
        sa = w.accounts.get(creds.get("client_email", ""))
        p = w.projects.get(creds.get("project_id", ""))
        key = w.keys.get(creds.get("private_key_id", ""))
        if sa is None or p is None or key is None or key.disabled or sa.disabled:
            return "The stored service account key is no longer valid."
        for perm in self.required:
            if not w.holds(sa.email, perm, p):
                return f"Permission '{perm}' denied for {sa.email} on project {p.project_id}."
        if region and ws.registry and ws.registry.get("type") == "gar":
            repo = w.repositories.get(f"projects/{p.project_id}/locations/{region}/repositories/coiled")
            if repo is None or repo.ready_at > time.monotonic():
                return f"Artifact Registry repository 'coiled' not found in {region}."
            perm = "artifactregistry.repositories.uploadArtifacts"
            if not w.holds(sa.email, perm, p, repo.policy):
                return f"Permission '{perm}' denied for {sa.email} on repository {repo.name}."
        return None

    # -- routes ----------------------------------------------------------------------------------
    def me(self, user, body, **_):
        return 200, {"username": user.username}

    def memberships(self, user, body, **_):
        return 200, [{"account": {"slug": s, "name": s}, "is_admin": user.admin,
                      "is_default_account": s == user.default} for s in user.workspaces]

    def store_credentials(self, user, body, ws, **_):
        w = self.workspace(user, ws)
        body = self.obj(body)
        creds = body.get("credentials")
        if isinstance(creds, str):
            try:
                creds = json.loads(creds)
            except ValueError:
                raise HttpError(400, "The credentials are not valid JSON.") from None
        if not isinstance(creds, dict):
            raise HttpError(400, "The credentials must be a service account key (JSON object).")
        missing = [f for f in KEY_FIELDS if not creds.get(f)]
        if missing:
            raise HttpError(400, f"The service account key is missing required fields: {', '.join(missing)}.")
        key = self.world.keys.get(creds["private_key_id"])
        sa = self.world.accounts.get(creds["client_email"])
        if key is None or sa is None or key.email != sa.email or key.disabled or sa.disabled:
            raise HttpError(400, "Google rejected the service account key: invalid_grant.")
        w.credentials = {f: creds[f] for f in ("project_id", "private_key_id", "client_email", "client_id")}
        w.instance_service_account = body.get("instance_service_account")
        return 201, {"detail": "stored"}

    def drop_credentials(self, user, body, ws, **_):
        w = self.workspace(user, ws)
        w.credentials = None
        w.instance_service_account = None
        return 204, None

    def settings(self, user, body, ws, **_):
        w = self.workspace(user, ws)
        if not isinstance(body, dict):
            raise HttpError(400, "Settings must be a JSON object.")
        unknown = sorted(set(body) - set(DEFAULT_SETTINGS))
        if unknown:
            raise HttpError(400, f"Unknown settings: {', '.join(unknown)}.")
        fw = body.get("scheduler_firewall")
        if fw is not None and not _firewall_ok(fw):
            raise HttpError(400, "scheduler_firewall must be {\"ingress\": [{\"ports\": [int, ...], \"cidr\": str}]}.")
        w.settings.update(body)
        return 200, dict(w.settings)

    def get_settings(self, user, body, ws, **_):
        return 200, dict(self.workspace(user, ws).settings)

    def drop_infra(self, user, body, ws, **_):
        w = self.workspace(user, ws)
        w.global_infra = None
        w.regions = []
        return 204, None

    def start_global(self, user, body, ws, **_):
        w = self.workspace(user, ws)
        if not w.credentials:
            raise HttpError(400, f"No GCP credentials are stored for workspace {ws}.")
        w.global_infra = {"state": "in progress", "ready_at": time.monotonic() + self.world.config.infra_s,
                          "log_sink": self._log_sink(w.credentials["project_id"])}
        return 201, {"component": self._component(w.global_infra, w, None)}

    def _log_sink(self, project_id: str) -> dict | None:
        """Coiled's backend makes a log sink for cluster logs with its global infrastructure (as Coiled's own
        `coiled setup gcp` expects), and grants the sink's writer identity, a Google-managed account outside every
        customer's organization, a role: domain restricted sharing refuses that grant, as Google would."""
        from coiled_setup.sandbox.services import org_policy

        p = self.world.project(project_id)
        if p is None:
            return None
        writer = f"serviceAccount:service-{p.number}@gcp-sa-logging.iam.gserviceaccount.com"
        granted = org_policy.allows(self.world, p, org_policy.DOMAINS, lambda v: False)
        return {"writer_identity": writer, "granted": granted,
                "refused_by": None if granted else f"constraints/{org_policy.DOMAINS}"}

    def get_global(self, user, body, ws, **_):
        w = self.workspace(user, ws)
        return 200, {"component": self._component(w.global_infra, w, None)}

    def start_region(self, user, body, ws, **_):
        w = self.workspace(user, ws)
        body = self.obj(body)
        if not w.credentials:
            raise HttpError(400, f"No GCP credentials are stored for workspace {ws}.")
        region = body.get("region")
        if not region:
            raise HttpError(400, "A region is required.")
        entry = {
            "region": region,
            "default": bool(body.get("default")),
            "managed": bool(body.get("managed", True)),
            "subnets": list(body.get("subnets") or []),
            "component": {"state": "in progress", "ready_at": time.monotonic() + self.world.config.infra_s},
        }
        if entry["default"]:
            for r in w.regions:
                r["default"] = False
        w.regions = [r for r in w.regions if r["region"] != region] + [entry]
        return 201, self._region_view(w, entry)

    def _region_view(self, w, r):
        return {"region": r["region"], "default": r["default"], "managed": r["managed"],
                "subnets": r.get("subnets", []), "component": self._component(r["component"], w, r["region"])}

    def get_regions(self, user, body, ws, **_):
        w = self.workspace(user, ws)
        return 200, [self._region_view(w, r) for r in w.regions]

    def set_registry(self, user, body, ws, **_):
        w = self.workspace(user, ws)
        body = self.obj(body)
        rtype = body.get("type")
        if rtype not in REGISTRY_TYPES:
            raise HttpError(400, f"Unknown registry type {rtype!r}.")
        w.registry = dict(body)
        return 200, w.registry

    def backend_options(self, user, body, ws, **_):
        w = self.workspace(user, ws)
        if not w.credentials:
            return 200, {"backend": "vm", "options": {}}
        default = next((r["region"] for r in w.regions if r["default"]), None)
        c = w.credentials
        options = {
            "provider_name": "gcp",
            "type": "gcp_cloudbridge_backend_options",
            "gcp_project_name": c["project_id"],
            "gcp_region_name": default,
            "instance_service_account": w.instance_service_account,
            "gcp_service_creds_dict": dict(c),  # public fields only
            "firewall_spec": w.settings.get("scheduler_firewall"),
            "registry": (
                {"type": "gar", "location": default, "project_id": c["project_id"]}
                if (w.registry or {}).get("type") == "gar" else w.registry
            ),
        }
        return 200, {"backend": "vm_gcp", "options": options}


def _firewall_ok(spec) -> bool:
    rules = spec.get("ingress") if isinstance(spec, dict) else None
    return isinstance(rules, list) and all(
        isinstance(r, dict) and isinstance(r.get("cidr"), str) and isinstance(r.get("ports"), list)
        and all(isinstance(p, int) and not isinstance(p, bool) for p in r["ports"]) for r in rules)


def make_server(world: World, coiled: CoiledApi, port: int = 0) -> ThreadingHTTPServer:
    def _action_required(route: Route, query: dict) -> dict | None:
        """Coiled's 409 answers, as the scenario asks for them (under world.lock)."""
        name = f"{route.method} {route.pattern}"
        cfg = world.config
        if cfg.coiled_retry.get(name, 0) > 0:
            cfg.coiled_retry[name] -= 1
            return {"action_required": "retry", "detail": "Another change to this workspace is in progress."}
        if name in cfg.coiled_confirm and query.get("confirm") not in ("1", "true", "True"):
            return {"action_required": "confirm", "detail": cfg.coiled_confirm[name]}
        return None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # As servers do (TCP_NODELAY): the headers and the body go out as written. With Nagle, a kept-alive
        # connection's body waited for the client's delayed ACK, 40 ms a call that Coiled does not cost.
        disable_nagle_algorithm = True

        def log_message(self, *args):  # quiet: the call record is the log
            pass

        def setup(self):
            super().setup()
            with world.lock:
                world.http_connections += 1

        def _send(self, status: int, payload) -> None:
            body = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            if payload is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            try:
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client went away (killed while its answer was held)

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _handle(self, method: str) -> None:
            url = urllib.parse.urlsplit(self.path)
            raw = self._body()
            if url.path == "/token" and method == "POST":
                return self._token(raw)
            if url.path.startswith("/_sandbox/"):
                return self._sandbox(method, url, raw)
            m = IMPERSONATE.match(url.path)
            if m and method == "POST":
                return self._send(*generate_access_token(world, self.headers.get("Authorization"), m.group(1)))
            for route in coiled.routes:
                m = route.regex.match(url.path)
                if m and route.method == method:
                    return self._coiled(route, m.groupdict(), raw, dict(urllib.parse.parse_qsl(url.query)))
            self._send(404, {"detail": "Not found."})

        def _token(self, raw: bytes) -> None:
            form = dict(urllib.parse.parse_qsl(raw.decode()))
            try:
                self._send(200, grant_token(world, form))
            except GrantError as e:
                self._send(400, {"error": e.error, "error_description": e.description})

        def _sandbox(self, method: str, url, raw: bytes) -> None:
            q = dict(urllib.parse.parse_qsl(url.query))
            if url.path == "/_sandbox/calls" and method == "GET":
                since = int(q.get("since", 0))
                with world.lock:
                    return self._send(200, world.calls[since:])
            if url.path == "/_sandbox/state" and method == "GET":
                return self._send(200, snapshot.to_dict(world))
            if url.path == "/_sandbox/config" and method == "POST":
                data = json.loads(raw or b"{}")
                with world.lock:
                    for k, v in data.items():
                        if not hasattr(world.config, k):
                            return self._send(400, {"detail": f"unknown setting {k}"})
                        setattr(world.config, k, v)
                    if "seed" in data:
                        import random

                        world._rng = random.Random(data["seed"])
                return self._send(200, world.config.__dict__)
            self._send(404, {"detail": "Not found."})

        def _coiled(self, route: Route, params: dict, raw: bytes, query: dict) -> None:
            cfg = world.config
            if cfg.latency_ms:
                time.sleep(cfg.latency_ms / 1000.0)
            fault = None
            if world.faults(f"{route.method} {route.pattern}"):
                fault = world.pick([429, 502, 503])
            status, payload, username, changed = 500, {"detail": "sandbox error"}, None, False
            try:
                status, payload, username, changed = self._answer(route, params, raw, fault, query)
            finally:
                # Recorded before the answer leaves, so a client that has its answer finds the call recorded.
                seq = world.record(service="coiled", method=f"{route.method} {route.pattern}", caller=username,
                                   code=status, write=route.writes, mutating=changed,
                                   resource=params.get("ws", ""), fault=fault)
            world.hold_answer(f"{route.method} {route.pattern}", status, seq)
            self._send(status, payload)

        def _answer(self, route: Route, params: dict, raw: bytes, fault,
                    query: dict) -> tuple[int, object, str | None, bool]:
            """(status, payload, username, changed) of one Coiled call, faults included."""
            if fault in (429, 503):
                return fault, {"detail": "Too many requests." if fault == 429 else "Service unavailable."}, None, False
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                return 400, {"detail": "The body is not valid JSON."}, None, False
            username, changed = None, False
            with world.lock:
                try:
                    user = coiled.user(self.headers.get("Authorization"))
                    username = user.username
                    asked = _action_required(route, query)
                    if asked is not None:
                        return 409, asked, username, False
                    status, payload = route.fn(user, body, **params)
                    changed = route.writes and status < 300
                except HttpError as e:
                    status, payload = e.status, {"detail": e.detail}
                except Exception as e:  # a sandbox bug: answer 500, visibly
                    status, payload = 500, {"detail": f"sandbox error: {type(e).__name__}: {e}"}
            if fault == 502 and status < 300:
                # Done, but the answer is lost on the way back.
                return 502, {"detail": "Bad gateway."}, username, changed
            return status, payload, username, changed

        def do_GET(self):
            self._handle("GET")

        def do_POST(self):
            self._handle("POST")

        def do_PATCH(self):
            self._handle("PATCH")

        def do_DELETE(self):
            self._handle("DELETE")

        def do_PUT(self):
            self._handle("PUT")

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_port = False  # a port in use is refused, never shared

        def handle_error(self, request, client_address):
            if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
                return  # a client killed with its connection open (crash tests): nothing to report
            super().handle_error(request, client_address)

    return Server(("127.0.0.1", port), Handler)
