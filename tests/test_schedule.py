"""Which calls a run makes together and which one after another, read from the sandbox's record.

One call followed another when, at 200 ms a call, it was answered at least 200 ms after the other (the record
stamps each answer when it is ready). That two calls overlapped is shown without timing guesses: the sandbox
holds back one method's answer for HOLD seconds, and the other call is recorded before that answer went out.
"""

import json

from tests.helpers import calls, http

L = 0.2
EPS = 0.02
FAST = dict(propagation_delay_s=0, operation_s=0, infra_s=0.05, latency_ms=int(L * 1000))
GCP = ("gcp", "--non-interactive", "--yes")
HOLD = 3.0


def one(made, method, **match):
    found = [c for c in made if c["method"] == method and all(c.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"{method}: {len(found)} calls\n" + "\n".join(f"{c['method']} {c['time']:.2f}"
                                                                         for c in made)
    return found[0]


def during(held, other) -> bool:
    """`other` went out before the answer to `held` (a call of the held method): they were under way together."""
    return other["time"] < held["time"] + HOLD - 0.5


def hold(sb, method: str) -> None:
    status, _ = http("POST", f"{sb.coiled_url}/_sandbox/config", {"hold_method": method, "hold_s": HOLD,
                                                                   "latency_ms": 0})
    assert status == 200


def after(later, earlier) -> bool:
    """`later` started once `earlier` was answered."""
    return later["time"] - L >= earlier["time"] - EPS


def test_independent_steps_apply_together_after_the_apis_and_before_coiled(make_sandbox, cli):
    sb = make_sandbox(**FAST)
    cli(sb, *GCP, "--create-instance-service-account", check=0)
    made = calls(sb)
    enable = one(made, "BatchEnableServices")
    google_writes = [c for c in made if c["write"] and c["service"] != "coiled"]
    # A project without billing is told before any other write.
    assert all(after(c, enable) for c in google_writes if c is not enable)
    # One writer of the project's policy at a time: the instance binding follows the account's.
    sets = [c for c in made if c["method"] == "SetIamPolicy" and c["service"] == "resourcemanager"]
    assert len(sets) == 2 and after(sets[1], sets[0]), sets
    # Coiled gets the key once everything it will use is in place.
    coiled_writes = [c for c in made if c["write"] and c["service"] == "coiled"]
    assert coiled_writes and all(after(c, g) for c in coiled_writes for g in google_writes)


def test_the_role_is_made_while_the_account_is(make_sandbox, cli):
    sb = make_sandbox(propagation_delay_s=0, operation_s=0, infra_s=0.05)
    hold(sb, "CreateServiceAccount")
    cli(sb, *GCP, "--create-instance-service-account", check=0)
    made = calls(sb)
    accounts = [c for c in made if c["method"] == "CreateServiceAccount"]
    roles = [c for c in made if c["method"] == "CreateRole"]  # Coiled's, then the instance role (after its account)
    assert len(accounts) == 2 and len(roles) == 2, (accounts, roles)
    assert during(accounts[0], roles[0]) and during(accounts[0], accounts[1])


def test_a_failed_step_lets_the_steps_under_way_end_and_starts_no_other(make_sandbox, cli, tmp_path):
    sb = make_sandbox(**FAST, fail_method="CreateRole", fail_code="FAILED_PRECONDITION", fail_times=1)
    proc = cli(sb, *GCP, "--output", "json")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    steps = {s["step"]: s["result"] for s in doc["steps"]}
    assert steps["role"] == "failed"
    # The account was being made beside the role: it ends, its key kept in its file.
    assert steps["account"] == "ok" and doc["key_file"]
    assert steps["binding"] == "not run" and steps["upload"] == "not run"
    made = calls(sb)
    assert [c for c in made if c["method"] == "CreateServiceAccountKey" and c["code"] == "OK"]
    assert not [c for c in made if c["method"] == "SetIamPolicy"]
    assert not [c for c in made if c["service"] == "coiled" and c["write"]]
    assert proc.stderr.count("Error:") == 1 and "Traceback" not in proc.stderr


def test_a_fresh_run_reads_nothing_twice_and_polls_no_finished_operation(make_sandbox, cli):
    sb = make_sandbox(**FAST)
    cli(sb, *GCP, check=0)
    made = calls(sb)
    # A just-created account has no key to count; a repository made by an operation done in its answer is there.
    assert not [c for c in made if c["method"] == "ListServiceAccountKeys"]
    assert not [c for c in made if c["method"] == "GetOperation"]
    # The account's binding is written with the etag read when the plan was made.
    enable = one(made, "BatchEnableServices")
    reads = [c for c in made if c["method"] == "GetIamPolicy" and c["service"] == "resourcemanager"]
    assert reads and all(c["time"] < enable["time"] for c in reads)
    # Read once: the refusal of a privileged account and the bindings' observations ask at the same time.
    assert len(reads) == 1, reads


def test_a_rerun_reads_what_depends_on_nothing_at_once(make_sandbox, cli):
    sb = make_sandbox(propagation_delay_s=0, operation_s=0, infra_s=0.05)
    cli(sb, *GCP, check=0)

    def rerun_holding(method):
        mark = len(calls(sb))
        hold(sb, method)
        cli(sb, *GCP, check=0)
        made = calls(sb, mark)
        assert not [c for c in made if c["write"]]
        return made, [c for c in made if c["method"] == method][0]

    # The refusals' reads (the project's policy, the organization's) go out with the steps' observations.
    made, policy = rerun_holding("GetIamPolicy")
    observed = [c for c in made if c["method"] in ("GetEffectivePolicy", "GetServiceAccount", "GetRole",
                                                   "GetRepository")]
    assert {c["method"] for c in observed} == {"GetEffectivePolicy", "GetServiceAccount", "GetRole", "GetRepository"}
    assert all(during(policy, c) for c in observed), observed
    # A project set up before: the account's keys are read beside the account, a repository's policy beside it.
    made, account = rerun_holding("GetServiceAccount")
    assert during(account, one(made, "ListServiceAccountKeys"))
    made, repository = rerun_holding("GetRepository")
    assert during(repository, one(made, "GetIamPolicy", service="artifactregistry"))



def planned_step():
    """The base of the engine tests' steps: a step that plans a change and applies it."""
    from coiled_setup.steps.base import CREATE, Change, Step

    class Planned(Step):
        key, title = "planned", "Planned"

        def plan(self, run):
            return Change(CREATE, self.key)

        def apply(self, run):
            return "done"

    return Planned


def applied_together(steps):
    """The engine applying `steps` together in a thread of its own, given 10 s: (engine, what it raised, whether it
    ended)."""
    import threading

    from coiled_setup.engine import Consent, Engine
    from coiled_setup.steps.base import Run
    from coiled_setup.ui import Ui

    engine = Engine(Run(opts=None, google=None, journal=None, ui=Ui(interactive=False)), steps,
                    Consent(interactive=False, yes=True), "p", together=True)
    engine.plan()
    raised = []

    def apply():
        try:
            engine.apply()
        except BaseException as e:  # noqa: BLE001 - what the run would raise
            raised.append(e)

    t = threading.Thread(target=apply, daemon=True)
    t.start()
    t.join(10)
    return engine, raised, not t.is_alive()


def test_a_bug_in_a_step_applied_beside_others_is_raised_not_waited_for():
    """An unexpected error in a step's thread reaches the run (its traceback, exit 1), never a run that hangs."""
    import threading

    class Slow(planned_step()):
        key, title = "slow", "Slow"

        def apply(self, run):
            threading.Event().wait(0.2)
            return "done"

    class Broken(Slow):
        key, title = "broken", "Broken"

        def apply(self, run):
            raise RuntimeError("planted")

    engine, raised, ended = applied_together([Slow(), Broken()])
    assert ended, "the run waited for a step whose thread had died"
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError) and "planted" in str(raised[0])
    assert {r["step"]: r["result"] for r in engine.results}["slow"] == "ok"


def test_ctrl_c_names_the_steps_under_way(make_sandbox, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    sb = make_sandbox(propagation_delay_s=0, operation_s=0, infra_s=0.05)
    sb.world.config.hold_method, sb.world.config.hold_s = "CreateServiceAccountKey", 30
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "DASK_", "COILED_"))}
    env.update(sb.env, HOME=str(tmp_path / "user-home"), GRPC_VERBOSITY="ERROR", NO_COLOR="1", COLUMNS="200")
    proc = subprocess.Popen([sys.executable, "-m", "coiled_setup", *GCP], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not [c for c in calls(sb) if c["method"] == "CreateServiceAccountKey"]:
            time.sleep(0.02)
        made = calls(sb)
        assert [c for c in made if c["method"] == "CreateRole"], "the role was not made before the key"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        sb.world.config.hold_method, sb.world.config.hold_s = "", 0
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    # The repository may be under way beside it (it needs only its API).
    assert "Interrupted during 'Service account and key'" in err, err


def fresh_holding(make_sandbox, cli, method: str):
    """A fresh run whose answers to `method` the sandbox holds back: its calls, and the held one."""
    sb = make_sandbox(propagation_delay_s=0, operation_s=0, infra_s=0.05)
    hold(sb, method)
    cli(sb, *GCP, check=0)
    made = calls(sb)
    return made, one(made, method)


def test_the_binding_is_written_while_the_key_is_made(make_sandbox, cli):
    """The project's binding needs the account to exist, not its key."""
    made, key = fresh_holding(make_sandbox, cli, "CreateServiceAccountKey")
    assert during(key, one(made, "SetIamPolicy", service="resourcemanager"))


def test_the_repository_is_made_while_the_account_is_and_granted_after_the_binding(make_sandbox, cli):
    """A repository needs its API, not the account; its grant names the account, so it follows the project's
    binding (which waits for Google to know a new account)."""
    made, account = fresh_holding(make_sandbox, cli, "CreateServiceAccount")
    assert during(account, one(made, "CreateRepository"))
    # Observed before the first write (the API off): after enabling, the repository is created, not read first.
    enable = one(made, "BatchEnableServices")
    assert [c["method"] for c in made if c["service"] == "artifactregistry" and c["time"] > enable["time"]][:1] == \
        ["CreateRepository"]
    assert one(made, "SetIamPolicy", service="artifactregistry")["time"] > \
        one(made, "SetIamPolicy", service="resourcemanager")["time"]


def test_the_preflight_and_the_observations_go_together(make_sandbox, cli):
    made, project = fresh_holding(make_sandbox, cli, "GetProject")
    observed = [c for c in made if c["method"] in ("GetServiceAccount", "GetRole", "GetRepository",
                                                   "GetEffectivePolicy")]
    assert {c["method"] for c in observed} == {"GetServiceAccount", "GetRole", "GetRepository", "GetEffectivePolicy"}
    assert all(during(project, c) for c in observed), observed


def test_a_rerun_tests_the_accounts_permissions_beside_the_observations(make_sandbox, cli):
    """Nothing is written before the test on a converged project: the test made while observing stands."""
    sb = make_sandbox(propagation_delay_s=0, operation_s=0, infra_s=0.05)
    cli(sb, *GCP, check=0)
    mark = len(calls(sb))
    hold(sb, "GetServiceAccount")
    cli(sb, *GCP, check=0)
    made = calls(sb, mark)
    account = one(made, "GetServiceAccount")
    tests = [c for c in made if c["method"] == "TestIamPermissions" and c["caller"].startswith("coiled@")]
    assert len(tests) == 2 and all(during(account, c) for c in tests), tests


def test_a_test_made_while_observing_is_made_again_after_a_write(make_sandbox, cli):
    """A binding removed since the last run: the test made while observing saw it missing; the step tests again
    once the binding is back."""
    from tests.helpers import clients

    sb = make_sandbox(propagation_delay_s=0, operation_s=0, infra_s=0.05)
    cli(sb, *GCP, check=0)
    c = clients(sb)
    policy = c.projects.get_iam_policy(request={"resource": f"projects/{sb.project}",
                                                "options": {"requested_policy_version": 3}})
    member = f"serviceAccount:coiled@{sb.project}.iam.gserviceaccount.com"
    for b in policy.bindings:
        if member in b.members:
            b.members.remove(member)
    c.projects.set_iam_policy(request={"resource": f"projects/{sb.project}", "policy": policy})
    mark = len(calls(sb))
    cli(sb, *GCP, check=0)
    made = calls(sb, mark)
    bound = one(made, "SetIamPolicy", service="resourcemanager")
    tests = [c for c in made if c["method"] == "TestIamPermissions" and c["caller"].startswith("coiled@")
             and c["resource"] == f"projects/{sb.project}"]
    assert tests and tests[-1]["time"] > bound["time"], tests


def test_a_step_waiting_within_its_apply_for_a_failed_one_ends_not_run():
    """run.wait_for never hangs a run: the step it waits for failed, so the waiting one ends without a result of
    its own, and the run ends with the failure."""
    import threading

    from coiled_setup.errors import UserError

    class First(planned_step()):
        key, title = "first", "First"

        def apply(self, run):
            threading.Event().wait(0.2)
            raise UserError("planted")

    class Waiter(First):
        key, title = "waiter", "Waiter"
        early = {"first": "start"}
        after = ("first",)

        def apply(self, run):
            run.reach("waiter.halfway")
            run.wait_for("first")
            return "done"

    class Later(planned_step()):
        key, title = "later", "Later"
        early = {"waiter": "halfway"}
        after = ("waiter",)

    engine, raised, ended = applied_together([First(), Waiter(), Later()])
    assert ended, "a step waited for a failed one forever"
    assert len(raised) == 1 and isinstance(raised[0], UserError) and "planted" in raised[0].message
    results = {r["step"]: r["result"] for r in engine.results}
    # The later step started on the waiter's point, before the failure.
    assert results == {"first": "failed", "waiter": "not run", "later": "ok"}, engine.results


def test_coiled_is_read_while_google_connects_and_each_read_once(make_sandbox, cli):
    """A run that asks nothing knows its workspace from the memberships: what Coiled holds is read before the first
    Google call (while Google's libraries load), and those answers serve the plan too."""
    sb = make_sandbox(**FAST)
    cli(sb, *GCP, check=0)
    mark = len(calls(sb))
    cli(sb, *GCP, check=0)
    made = calls(sb, mark)
    first_google = min(c["time"] for c in made if c["service"] != "coiled") - L  # when it was sent
    reads = [c for c in made if c["service"] == "coiled" and c["method"].startswith("GET")
             and "/user/me" not in c["method"]]
    assert sorted(c["method"] for c in reads) == sorted([
        "GET /api/v1/{ws}/backend_options/", "GET /api/v2/setup/account/{ws}/gcp/settings",
        "GET /api/v2/setup/account/{ws}/gcp/regions", "GET /api/v2/setup/account/{ws}/gcp/global"]), reads
    assert all(c["time"] < first_google for c in reads), reads


def test_one_poller_at_a_time_while_google_learns_a_new_account(make_sandbox, cli):
    """Google knows a new account only after a while: the key's step waits for it, and the binding started beside
    it waits for that step after its first refusal instead of polling too; the repository, refused while its
    just-enabled API settles, waits for the binding (its grant would anyway)."""
    sb = make_sandbox(propagation_delay_s=3, operation_s=0, infra_s=0.05)
    cli(sb, *GCP, check=0)
    made = calls(sb)
    key = one(made, "CreateServiceAccountKey", code="OK")
    refused = [c for c in made if c["method"] == "SetIamPolicy" and c["service"] == "resourcemanager"
               and c["code"] != "OK" and c["time"] < key["time"]]
    assert len(refused) <= 1, refused
    creates = [c for c in made if c["method"] == "CreateRepository"]
    assert len(creates) <= 2, [(c["code"], c["time"]) for c in creates]


def test_a_step_waiting_for_one_under_way_when_another_fails_ends_with_it():
    """The first failure lets the steps under way end: one waiting within its apply (run.wait_for) for a step
    still under way, which then ends well, goes on as that step does, rather than ending "not run" with a reason
    that says the awaited step did not end."""
    import threading

    from coiled_setup.errors import UserError

    class Slow(planned_step()):
        key, title = "slow", "Slow"

        def apply(self, run):
            threading.Event().wait(0.5)
            return "done"

    class Failing(Slow):
        key, title = "failing", "Failing"

        def apply(self, run):
            threading.Event().wait(0.1)
            raise UserError("planted")

    class Waiter(Slow):
        key, title = "waiter", "Waiter"
        early = {"slow": "start"}
        after = ("slow",)

        def apply(self, run):
            run.wait_for("slow")
            return "done"

    engine, raised, ended = applied_together([Slow(), Failing(), Waiter()])
    assert ended, "a step waited forever"
    assert len(raised) == 1 and isinstance(raised[0], UserError) and "planted" in raised[0].message
    results = {r["step"]: r["result"] for r in engine.results}
    assert results == {"slow": "ok", "failing": "failed", "waiter": "ok"}, engine.results


def test_what_is_done_so_far_counts_changes_not_checks():
    """Ctrl-C says what was done so far: a step that only checked changed nothing."""
    from coiled_setup.steps.base import CHECK, Change

    class Made(planned_step()):
        key, title = "made", "Made"

    class Checked(Made):
        key, title = "checked", "Checked"

        def plan(self, run):
            return Change(CHECK, "checked")

    engine, raised, ended = applied_together([Made(), Checked()])
    assert ended and not raised
    assert engine.done() == ["Made"]
