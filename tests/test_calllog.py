"""--verbose and --log-file: a line per Google and Coiled call, and failures that name the log.

Regressions these tests guard: a call missing from the log (Google's or Coiled's); the log readable by others;
a key or the Coiled token written to it; a failure sentence that does not say where the log is.
"""

from __future__ import annotations

import json
import stat

P = "coiled-demo"


def test_every_call_is_logged_once_without_a_secret_and_failures_name_the_log(sandbox, cli, tmp_path):
    log = tmp_path / "calls.log"
    out = cli(sandbox, "gcp", "--non-interactive", "--yes", "--verbose", "--log-file", str(log), check=0)
    lines = log.read_text().splitlines()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert lines[0].endswith("gcp started")
    body = "\n".join(lines)
    for call in ("google get_policy coiled-demo OK", "google create_key coiled@coiled-demo.iam.gserviceaccount.com OK",
                 "coiled POST /api/v2/cloud-credentials/demo/gcp OK"):
        assert call in body, call
        assert f"· {call}" in out.stderr  # --verbose: the same lines on stderr, stdout left to the program
    key = json.loads((sandbox.state_dir / "home" / "keys" / P / "coiled.json").read_text())
    assert key["private_key"].split("-----")[2].strip()[:40] not in body
    assert sandbox.coiled_token not in body and sandbox.coiled_token not in out.stderr

    failed = cli(sandbox, "gcp", "--non-interactive", "--yes", "--role-id", "x", "--log-file", str(log), check=2)
    assert f"(every call is logged in {log})." in failed.stderr
    assert log.read_text().startswith(body)  # appended to, not replaced
