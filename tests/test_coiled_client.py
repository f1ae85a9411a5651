"""Coiled as its own client sees it: the workspace chosen, the login found, confirmations, the workspace's
settings as the place the defaults live. The real CLI against one sandbox (users told apart by token)."""

from __future__ import annotations

import copy
import json

import pytest

from coiled_setup.sandbox.scenario import DEFAULT_SCENARIO, DEFAULT_TOKEN

MARKED = DEFAULT_TOKEN  # workspaces demo and team; Coiled marks team as the default
UNMARKED = "unmarked-1111-token"  # the same username, the same workspaces, no default marked
NARROW = "203.0.113.0/24"


@pytest.fixture(scope="module")
def sb(tmp_path_factory):
    from coiled_setup.sandbox import Config, Sandbox

    scenario = copy.deepcopy(DEFAULT_SCENARIO)
    scenario["coiled"]["users"] = [
        {"token": MARKED, "username": "demo", "workspaces": ["demo", "team"], "default": "team"},
        {"token": UNMARKED, "username": "demo", "workspaces": ["demo", "team"]},
    ]
    box = Sandbox(scenario, Config(propagation_delay_s=0, operation_s=0.05, infra_s=0.05),
                  state_dir=tmp_path_factory.mktemp("coiled-client")).start()
    yield box
    box.stop()


def planned_workspace(cli, sb, *args, env=None, code=0):
    out = cli(sb, "gcp", "--dry-run", "--output", "json", *args, env=env, check=code)
    return json.loads(out.stdout)


# -- the default workspace ----------------------------------------------------------------------------------


def test_the_workspace_coiled_marks_as_default_is_chosen(sb, cli):
    assert planned_workspace(cli, sb)["workspace"] == "team"


def test_the_flag_and_the_environment_come_before_the_mark(sb, cli):
    assert planned_workspace(cli, sb, "--workspace", "demo")["workspace"] == "demo"
    assert planned_workspace(cli, sb, env={"DASK_COILED__WORKSPACE": "demo"})["workspace"] == "demo"


def test_without_a_mark_several_workspaces_are_not_guessed(sb, cli):
    # Not the one named like the user: Coiled's own client only falls back to it, and warns it is a guess.
    doc = planned_workspace(cli, sb, env={"DASK_COILED__TOKEN": UNMARKED}, code=2)
    assert "demo, team" in doc["error"] and "--workspace" in doc["error"]
