"""Starts and stops the sandbox: a gRPC server for Google, an HTTP server for tokens and Coiled."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
import threading
from concurrent import futures
from pathlib import Path

import grpc

from coiled_setup import role_templates
from coiled_setup.sandbox import persist
from coiled_setup.sandbox import scenario as scenarios
from coiled_setup.sandbox.grpc_api import build_handlers
from coiled_setup.sandbox.http_api import CoiledApi, make_server
from coiled_setup.sandbox.world import Config, World

ENDPOINT_VAR = "COILED_SETUP_GOOGLE_ENDPOINT"


def _refuse_in_use(port: int) -> None:
    """OSError when the port is in use, found by a plain bind so that gRPC logs nothing."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


class Sandbox:
    def __init__(
        self,
        scenario: dict | str | Path | None = None,
        config: Config | None = None,
        *,
        state_dir: str | Path | None = None,
        port: int = 0,
        persist: bool = False,
    ):
        self.persist = persist
        self.world = World(config or Config())
        self._scenario = scenario if isinstance(scenario, dict) else scenarios.load(scenario)
        self._port = port
        self.state_dir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="coiled-sandbox-"))
        self._grpc: grpc.Server | None = None
        self._http = None
        self._http_thread: threading.Thread | None = None
        self.project = self._scenario["projects"][0]["id"]

    def start(self) -> Sandbox:
        """Starts serving; with `persist`, resumes the world saved in the state directory when there is one."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.operator_key_path = self.state_dir / "operator-key.json"
        saved = persist.load(self.world_file, self.world.config) if self.persist else None
        self.resumed = False
        if saved is not None and self.operator_key_path.exists():
            world, (grpc_port, http_port) = saved
            try:
                self._listen(world, grpc_port, http_port)
                self.resumed = True
            except OSError:
                pass  # its ports are taken: start afresh rather than hand out key files naming them
        if not self.resumed:
            if self.persist:
                # Files of an earlier world would name keys and ports that no longer exist.
                for sub in ("home", "dask"):
                    shutil.rmtree(self.state_dir / sub, ignore_errors=True)
            self.world = World(self.world.config)
            if self.persist and not self._port:
                self._listen_resumable(self.world)
            else:
                self._listen(self.world, self._port, self._port + 1 if self._port else 0)
            keyfile = scenarios.apply(self.world, self._scenario)
            fd = os.open(self.operator_key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(keyfile, f)
        self.operator_email = json.loads(self.operator_key_path.read_text())["client_email"]
        self.coiled_token = next(iter(self.world.coiled.users), "")
        return self

    def _listen_resumable(self, world: World) -> None:
        """Ports below the system's ephemeral range: a server started on port 0 (any other sandbox, any test)
        never takes them, so the saved world can be resumed on them later."""
        import random

        try:
            low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            low = 32768
        top = max(min(low, 32768), 12000)
        for _ in range(40):
            port = random.randrange(10000, top - 2)
            try:
                self._listen(world, port, port + 1)
                return
            except OSError:
                continue
        self._listen(world, 0, 0)

    @property
    def world_file(self) -> Path:
        return self.state_dir / "world.json"

    def _listen(self, world: World, grpc_port: int, http_port: int) -> None:
        perms = list(role_templates.load().permissions)
        if grpc_port:
            _refuse_in_use(grpc_port)
        http = make_server(world, CoiledApi(world, perms), port=http_port)
        # gRPC would share a port already in use (SO_REUSEPORT) and split the calls between two sandboxes.
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), handlers=build_handlers(world),
                             options=[("grpc.so_reuseport", 0)])
        try:
            bound = server.add_insecure_port(f"127.0.0.1:{grpc_port}")
        except RuntimeError:
            bound = 0
        if not bound:
            http.server_close()
            raise OSError(errno.EADDRINUSE, f"cannot listen on 127.0.0.1:{grpc_port}")
        self.world, self._http, self._grpc = world, http, server
        http_port = http.server_address[1]
        world.token_uri = f"http://127.0.0.1:{http_port}/token"
        server.start()
        # A short poll interval: shutdown() waits for the serving loop to notice, so stop() is quick.
        self._http_thread = threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._http_thread.start()
        self.google_endpoint = f"127.0.0.1:{bound}"
        self.coiled_url = f"http://127.0.0.1:{http_port}"

    @property
    def env(self) -> dict[str, str]:
        """Variables that point coiled-setup (and a Coiled login) at this sandbox."""
        return {
            ENDPOINT_VAR: self.google_endpoint,
            "GOOGLE_APPLICATION_CREDENTIALS": str(self.operator_key_path),
            "GOOGLE_CLOUD_PROJECT": self.project,
            "DASK_COILED__SERVER": self.coiled_url,
            "DASK_COILED__TOKEN": self.coiled_token,
            "COILED_SETUP_HOME": str(self.state_dir / "home"),
            "DASK_CONFIG": str(self.state_dir / "dask"),
        }

    def describe(self) -> dict:
        return {
            "google_endpoint": self.google_endpoint,
            "coiled_url": self.coiled_url,
            "project": self.project,
            "env": self.env,
        }

    def stop(self) -> None:
        if self.persist and self._grpc is not None:
            persist.save(self.world, self.world_file, (int(self.google_endpoint.rsplit(":", 1)[1]),
                                                       int(self.coiled_url.rsplit(":", 1)[1])))
        self.world.stopping.set()
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
