"""The official `coiled` client's own request code against the sandbox's Coiled routes.

Skipped unless the `coiled` package is importable (it is not a test dependency: it pulls in dask and
distributed). To run it: `.venv/bin/pip install coiled==1.135.6 && .venv/bin/python -m pytest -q
tests/test_coiled_official.py`."""

from __future__ import annotations

import copy

import pytest

from coiled_setup.sandbox.scenario import DEFAULT_SCENARIO, DEFAULT_TOKEN
from tests.helpers import calls, state
from tests.test_sandbox_coiled import make_key

coiled = pytest.importorskip("coiled")
from coiled.cli.setup.gcp import wait_on_component_ready  # noqa: E402
from coiled.v2.core import ServerError  # noqa: E402

CREDS = "/api/v2/cloud-credentials/{ws}/gcp"


@pytest.fixture(scope="module")
def sb(tmp_path_factory):
    from coiled_setup.sandbox import Config, Sandbox

    scenario = copy.deepcopy(DEFAULT_SCENARIO)
    scenario["coiled"] = {
        "users": [{"token": DEFAULT_TOKEN, "username": "demo", "workspaces": ["demo", "team"], "default": "team"}],
        "confirm": {f"POST {CREDS}": "Workspace team already holds other credentials; replace them?"},
    }
    scenario["coiled"]["users"].append({"token": "other-0000-token", "username": "eve", "workspaces": ["elsewhere"]})
    # Infrastructure that takes a moment: the official waits poll the GET routes (every 2 s) and parse them.
    box = Sandbox(scenario, Config(infra_s=0.5), state_dir=tmp_path_factory.mktemp("official")).start()
    yield box
    box.stop()


def test_the_default_workspace_is_the_one_coiled_marks(sb):
    with coiled.Cloud(server=sb.coiled_url, token=DEFAULT_TOKEN) as cloud:
        assert cloud.default_workspace == "team"
        assert cloud.accounts["demo"]["admin"] is True


def test_a_workspace_of_someone_else_is_refused(sb):
    with pytest.raises(PermissionError, match="elsewhere"):
        with coiled.Cloud(server=sb.coiled_url, token=DEFAULT_TOKEN, workspace="elsewhere"):
            pass
    with coiled.Cloud(server=sb.coiled_url, token=DEFAULT_TOKEN) as cloud:
        with pytest.raises(ServerError, match="403.*aren't a member"):
            cloud._sync_request("/api/v2/setup/account/elsewhere/gcp/settings", method="PATCH", json={})
        with pytest.raises(ServerError, match="404"):
            cloud._sync_request("/api/v2/setup/account/nowhere/gcp/settings", method="PATCH", json={})


def test_the_official_setup_requests_work(sb, monkeypatch):
    """What `coiled setup gcp` sends, in its order, with its own code; the confirmation asked and given."""
    key = make_key(sb)
    asked = []
    monkeypatch.setattr("rich.prompt.Confirm.ask", lambda *a, **k: asked.append(a) or True)
    ws = "team"
    with coiled.Cloud(server=sb.coiled_url, token=DEFAULT_TOKEN) as cloud:
        since = len(calls(sb))
        cloud._sync_request(f"/api/v2/cloud-credentials/{ws}/gcp", method="POST", json_result=True,
                            handle_confirm=True, json={"credentials": key, "instance_service_account": None})
        assert asked, "the 409 action_required was not turned into a question"
        codes = [c["code"] for c in calls(sb, since) if c["method"] == f"POST {CREDS}"]
        assert codes == [409, 201]
        cloud._sync_request(f"/api/v2/setup/account/{ws}/gcp/settings", method="PATCH", json_result=True, json={
            "auto_setup": True, "give_workers_public_ip": True, "give_scheduler_public_ip": True,
            "scheduler_firewall": None, "custom_software_bucket_prefix": None, "use_self_hosted_bucket": None})
        cloud._sync_request(f"/api/v2/setup/account/{ws}/gcp", method="DELETE")
        assert wait_on_component_ready(route=f"/api/v2/setup/account/{ws}/gcp/global", component_name="Global",
                                       create_json={"managed": True, "network": None, "scheduler_network_tags": None,
                                                    "cluster_network_tags": None}, cloud=cloud)
        assert wait_on_component_ready(
            route=f"/api/v2/setup/account/{ws}/gcp/regions", component_name="Regional", cloud=cloud,
            create_json={"default": True, "region": "us-east1", "managed": True,
                         "subnets": [{"link": None, "name": None, "for_workers": True, "for_schedulers": True}]})
        cloud._sync_request(f"/api/v2/user/account/{ws}/registry", method="POST", json_result=True,
                            json={"type": "gar"})
        bo = cloud._sync(cloud.get_backend_options, ws)
        assert bo["backend"] == "vm_gcp" and bo["options"]["gcp_project_name"] == key["project_id"]
        assert cloud._sync(cloud.get_account_provider_name, ws) == "gcp"
    team = state(sb)["coiled"]["workspaces"]["team"]
    assert team["credentials"]["private_key_id"] == key["private_key_id"]
    assert team["settings"]["give_workers_public_ip"] is True and team["registry"] == {"type": "gar"}
    assert [(r["region"], r["default"], r["component"]["state"]) for r in team["regions"]] == [
        ("us-east1", True, "created")]


def test_the_dask_config_is_read_as_dask_reads_it(tmp_path, monkeypatch):
    import dask.config

    from coiled_setup import context

    for name in [n for n in __import__("os").environ if n.startswith("DASK_")]:
        monkeypatch.delenv(name)
    root, user, extra = tmp_path / "root", tmp_path / "home" / ".config" / "dask", tmp_path / "extra"
    for d, name, text in [
        (root, "a.yaml", "coiled:\n  token: from-root\n  backend_options: {region_name: us-east1, spot: true}\n"),
        (user, "b.yml", "coiled:\n  server: http://user\n  backend-options: {zone_name: us-east1-c}\n"),
        (user, "c.json", '{"coiled": {"workspace": "from-json", "token": "from-user"}}'),
        (extra, "coiled.yaml", "coiled:\n  workspace: from-dask-config\n"),
    ]:
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DASK_ROOT_CONFIG", str(root))
    monkeypatch.setenv("DASK_CONFIG", str(extra))
    monkeypatch.setenv("DASK_COILED__USER", "ann")
    monkeypatch.setenv("DASK_COILED__BACKEND_OPTIONS__SPOT", "False")
    monkeypatch.setenv("DASK_COILED__ACCOUNT", "[1, 'x']")
    ours = context.dask_config()["coiled"]
    theirs = dask.config.collect(paths=context.dask_config_paths())["coiled"]
    assert ours == theirs
    assert ours["token"] == "from-user" and ours["workspace"] == "from-dask-config"
