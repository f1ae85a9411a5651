"""The sandbox world's one serializer: what the state dump shows, what a saved world resumes, what a scenario builds."""

from coiled_setup.sandbox import persist, scenario, snapshot
from coiled_setup.sandbox.world import Config, World

RICH = {
    "projects": [
        {"id": "p-one", "number": "111", "billing": False, "disable_key_creation": True,
         "services": ["iam.googleapis.com"],
         "service_accounts": [{"id": "coiled", "display_name": "Coiled", "keys": 2}],
         "roles": [{"id": "coiled", "permissions": ["iam.roles.get"]}, {"id": "old", "purged": True}],
         "bindings": [{"role": "roles/viewer", "members": ["user:ann@example.com"],
                       "condition": {"title": "t", "expression": "true"}}],
         "audit_configs": [{"service": "allServices", "audit_log_configs": [{"log_type": "DATA_READ"}]}],
         "repositories": [{"location": "us-east1", "id": "coiled",
                           "bindings": [{"role": "roles/artifactregistry.reader", "members": ["user:b@x.io"]}]}]},
        {"id": "p-two", "state": "DELETE_REQUESTED"},
    ],
    "operator": {"id": "op-erator", "roles": ["roles/owner"]},
    "coiled": {"users": [{"token": "t0k3n", "username": "demo", "workspaces": ["demo", "other"], "admin": False}]},
}


def built() -> World:
    w = World(Config())
    scenario.apply(w, RICH)
    return w


def test_a_scenario_builds_what_the_dump_shows():
    dump = snapshot.to_dict(built())
    one = dump["projects"]["p-one"]
    assert (one["number"], one["billing"], one["key_creation_disabled"], one["services"]) == (
        "111", False, True, ["iam.googleapis.com"])
    assert one["policy"]["version"] == 3 and one["policy"]["audit_configs"][0]["service"] == "allServices"
    assert one["policy"]["bindings"][-1] == {"role": "roles/owner",
                                             "members": ["serviceAccount:op-erator@p-one.iam.gserviceaccount.com"]}
    assert dump["projects"]["p-two"]["state"] == "DELETE_REQUESTED"
    assert len(dump["service_accounts"]["coiled@p-one.iam.gserviceaccount.com"]["user_keys"]) == 2
    assert dump["roles"]["projects/p-one/roles/old"]["deleted"] is True
    assert dump["repositories"]["projects/p-one/locations/us-east1/repositories/coiled"]["ready"] is True
    assert dump["coiled"]["users"] == [{"username": "demo", "workspaces": ["demo", "other"], "default": None}]
    assert set(dump["coiled"]["workspaces"]) == {"demo", "other"}
    # Public parts only: no token, no system-managed key.
    assert "t0k3n" not in str(dump) and all(k["type"] == "USER_MANAGED" for k in dump["keys"].values())


def test_a_saved_world_resumes_as_it_was(tmp_path):
    w = built()
    w.coiled.workspaces["demo"].global_infra = {"state": "ready", "ready_at": w.now() + 99}
    w.projects["p-one"].policy.counter = 7
    persist.save(w, tmp_path / "world.json", (1, 2))
    back, ports = persist.load(tmp_path / "world.json", Config())
    assert ports == (1, 2)
    assert snapshot.to_dict(back, full=True) == snapshot.to_dict(w, full=True)
    assert back.projects["p-one"].policy.etag == w.projects["p-one"].policy.etag
    assert back.coiled.users["t0k3n"].admin is False
    assert back.coiled.workspaces["demo"].global_infra["ready_at"] <= back.now()


def test_a_file_of_another_format_is_not_resumed(tmp_path):
    (tmp_path / "world.json").write_text('{"format": 1, "projects": {}}')
    assert persist.load(tmp_path / "world.json", Config()) is None
