"""The JSON contract: the schema files that ship describe what `--output json` prints, and the suite holds every
document it sees to them (tests/json_contract.py, wired into the `cli` fixture and the reliability lab)."""

import json

import pytest

from tests import json_contract
from tests import reliability as R

ENVELOPE = ("schema_version", "tool_version", "command", "exit_code", "error")


def test_the_schemas_agree_with_the_code():
    from coiled_setup import errors, report
    from coiled_setup.checks import STATUSES
    from coiled_setup.steps import base

    common = json_contract.schema("common")
    codes = {errors.OK, errors.STEP_FAILED, errors.BAD_INPUT, errors.MISSING_PERMISSION, errors.LOCKED,
             errors.ORG_POLICY, errors.INTERRUPTED}
    for name in ("common", *report.FIELDS):
        s = json_contract.schema(name)
        assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        json_contract.validator(None if name == "common" else name)  # a valid schema
        assert s["properties"]["schema_version"] == {**common["properties"]["schema_version"],
                                                     "const": report.SCHEMA_VERSION}
        assert set(s["properties"]["exit_code"]["enum"]) == codes
        # Forward compatible: a new field needs no new schema_version, so no document may refuse one.
        assert s["additionalProperties"] is True
        if name != "common":
            assert set(s["required"]) == {*ENVELOPE, *report.FIELDS[name]}, name
            assert s["properties"]["command"] == {"const": name}
    assert set(common["required"]) == set(ENVELOPE)
    step = json_contract.schema("gcp")["$defs"]["step"]["properties"]
    assert set(step["action"]["enum"]) == {base.NOTHING, base.CREATE, base.UPDATE, base.CHECK}
    check = json_contract.schema("verify")["$defs"]
    assert check["check"]["properties"]["status"]["enum"] == list(STATUSES)
    assert set(check["summary"]["required"]) == {*STATUSES, "passed", "strict"}


def test_gcp_verify_and_usage_error_documents_match_their_schemas(sandbox, cli):
    done = json_contract.check(json.loads(cli(sandbox, "gcp", "--non-interactive", "--yes", "--output", "json",
                                              check=0).stdout))
    assert done["command"] == "gcp" and done["steps"]
    checked = json_contract.check(json.loads(cli(sandbox, "verify", "--output", "json", check=0).stdout))
    assert checked["command"] == "verify" and checked["checks"]
    usage = json_contract.check(json.loads(cli(None, "gcp", "--output", "json", "--bogus", check=2).stdout))
    assert usage["command"] == "gcp" and usage["steps"] == [] and "--bogus" in usage["error"]
    # No command recognised: the document has the common fields only.
    nameless = json_contract.check(json.loads(cli(None, "--output", "json", "gcp", check=2).stdout))
    assert nameless["command"] is None


def _gcp_doc() -> dict:
    return {"schema_version": 1, "tool_version": "0.1.0", "command": "gcp", "exit_code": 0, "error": None,
            "project": "p", "workspace": None, "service_account": "coiled@p.iam.gserviceaccount.com",
            "key_file": None, "conflicts_retried": 0,
            "steps": [{"step": "role", "title": "Custom role", "action": "create", "detail": "create it",
                       "result": "ok", "outcome": "created"}]}


def _verify_doc() -> dict:
    return {"schema_version": 1, "tool_version": "0.1.0", "command": "verify", "exit_code": 1, "error": None,
            "project": "p", "service_account": None, "key_file": None, "workspace": None,
            "checks": [{"name": "custom_role", "title": "Custom role", "status": "failed", "detail": "missing",
                        "remedy": "coiled-setup gcp"}],
            "summary": {"ok": 0, "failed": 1, "warning": 0, "skipped": 0, "passed": False, "strict": False}}


def _set(doc: dict, path: str, value) -> dict:
    *parents, last = path.split("/")
    node = doc
    for p in parents:
        node = node[int(p) if p.isdigit() else p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize("make, path, value", [
    (_gcp_doc, "exit_code", "0"),
    (_gcp_doc, "exit_code", 5),
    (_gcp_doc, "schema_version", 2),
    (_gcp_doc, "steps", KeyError),
    (_gcp_doc, "steps/0/action", "delete"),
    (_gcp_doc, "steps/0/result", "done"),
    (_gcp_doc, "steps/0/outcome", KeyError),
    (_gcp_doc, "conflicts_retried", -1),
    (_gcp_doc, "exit_code", 1),  # a failed run that does not say why
    (_verify_doc, "command", "gcp"),
    (_verify_doc, "checks/0/status", "passed"),
    (_verify_doc, "summary/passed", "no"),
    (_verify_doc, "summary/warning", KeyError),
    (_verify_doc, "exit_code", 2),  # verify that could not run, without saying why
])
def test_a_wrong_document_is_rejected(make, path, value):
    assert json_contract.problems(make()) == []
    wrong = _set(make(), path, value)
    found = json_contract.problems(wrong)
    assert found, f"{path}={value!r} passed"
    with pytest.raises(AssertionError, match="breaks its schema"):
        json_contract.check_output(json.dumps(wrong))


def test_a_new_field_is_accepted():
    """Adding a field is not a new schema_version: consumers ignore what they do not know, and so does the schema."""
    assert json_contract.problems({**_gcp_doc(), "later": 1}) == []
    assert json_contract.problems(_set(_verify_doc(), "checks/0/later", [1])) == []


def test_a_command_without_a_schema_is_refused():
    with pytest.raises(AssertionError, match="no JSON schema ships for the command 'aws'"):
        json_contract.check_output(json.dumps({**_gcp_doc(), "command": "aws"}))


def test_the_cli_fixture_checks_every_document(cli, tmp_path):
    """A CLI whose document drifts from its schema fails the test that ran it."""
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "sitecustomize.py").write_text("import coiled_setup.report as r\nr.SCHEMA_VERSION = '1'\n")
    with pytest.raises(AssertionError, match="schema_version"):
        cli(None, "gcp", "--output", "json", "--bogus", env={"PYTHONPATH": str(planted)})


def test_the_reliability_lab_checks_every_document(tmp_path, monkeypatch):
    from coiled_setup import report

    lab = R.Lab(tmp_path / "lab")
    try:
        assert lab.run(None, "verify", "--project", "My_Project", "--output", "json").doc["exit_code"] == 2
        monkeypatch.setattr(report, "SCHEMA_VERSION", "1")
        with pytest.raises(AssertionError, match="schema_version"):
            lab.run(None, "verify", "--project", "My_Project", "--output", "json")
    finally:
        lab.close()
