"""The plan/apply engine any command drives its steps through: observe them together, plan each, show the plan,
ask for consent, then apply step by step with Retry/Skip/Abort, keeping one result per step."""

from __future__ import annotations

from dataclasses import dataclass

from coiled_setup import retry, waiting
from coiled_setup.cloud import Aborted, CloudError, Transient
from coiled_setup.coiled_api import CoiledError
from coiled_setup.concurrency import run_all
from coiled_setup.errors import BAD_INPUT, OK, UserError
from coiled_setup.remedies import explain
from coiled_setup.steps.base import CHECK, NOTHING, Change, Run, Step


class Abandoned(Exception):
    """A step waited for an earlier one (Run.wait_for) that failed: it ends without a result of its own."""


@dataclass
class Consent:
    """How a run may go ahead: what the user said on the command line and whether someone can be asked."""

    interactive: bool
    yes: bool = False
    dry_run: bool = False
    wait_timeout: float = 600.0
    idle: str = "Nothing to change: everything is already in place."  # what a plan without writes says


class Engine:
    def __init__(self, run: Run, steps: list[Step], consent: Consent, project: str, together: bool = False):
        self.run = run
        self.steps = steps
        self.consent = consent
        self.project = project
        # Steps that do not depend on each other apply together; only when nobody is asked about a failure
        # (a question is about one step at a time).
        self.together = together and not consent.interactive
        self.ui = run.ui
        self.plans: dict[str, Change] = {}
        self.results: list[dict] = []
        self.current: Step | None = None
        self.running: list[Step] = []  # the steps under way when they apply together

    # -- observe and plan ------------------------------------------------------------------------------
    def _retrying(self, step: Step, fn):
        """fn (the step's apply), started over after a fresh observation while a write failed transiently or lost
        a conflict, up to the retry policy's attempts.

        Only for errors no layer below has retried: reads (retried by the Google adapter) and Coiled's calls
        (by its client) that were given up on are not tried again here. The writes the adapter does not repeat
        are (see cloud.py), after reading again: an earlier try may have made the change but lost the answer.
        """
        policy = retry.current()
        delays = policy.delays()
        for attempt in range(1, policy.attempts + 1):
            try:
                return fn()
            except (Transient, Aborted) as e:
                if retry.retried(e) or attempt == policy.attempts:
                    raise
            self.ui.tick(f"retrying after a temporary error (attempt {attempt + 1})")
            policy.sleep(next(delays))
            step.observe(self.run)

    def observe(self, step: Step) -> None:
        """Reads what exists for one step; a refusal it cannot get past is one sentence, never a traceback.

        Not retried here: the adapter retried each read, the Coiled client each call."""
        try:
            step.observe(self.run)
        except CloudError as e:
            message, code = explain(e, self.project)
            if e.code not in message:
                message = f"{message.rstrip('.')} (Google answered {e.code})."
            raise UserError(f"Could not read what exists for '{step.title}': {message}", code) from None

    def observe_all(self, steps: list[Step] | None = None) -> None:
        """Observes every step (or these) together (observations only read)."""
        run_all([lambda s=s: self.observe(s) for s in (self.steps if steps is None else steps)])

    def plan(self, observed: bool = False) -> dict[str, Change]:
        """Plans each step in order, observing them all first unless the caller already did."""
        if not observed:
            self.observe_all()
        self.plans = {}
        for s in self.steps:
            self.plans[s.key] = self.plan_one(s)
        self.results = [{"step": s.key, "title": s.title, "action": self.plans[s.key].action,
                         "detail": self.plans[s.key].detail, "result": "not run", "outcome": ""} for s in self.steps]
        return self.plans

    def plan_one(self, step: Step) -> Change:
        """The step's plan, handing what it settles to the later steps through the run record."""
        before = self.steps[:next(i for i, x in enumerate(self.steps) if x.key == step.key)]
        self.run.earlier_writes = any(self.plans[x.key].writes for x in before if x.key in self.plans)
        change = step.plan(self.run)
        for name, value in change.publish.items():
            if name not in step.publishes:
                raise TypeError(f"step {step.key} publishes {name}, which it does not declare")
            setattr(self.run, name, value)
        return change

    def show(self) -> None:
        self.ui.plan([(s.title, self.plans[s.key].action, self.plans[s.key].detail) for s in self.steps])

    @property
    def writes(self) -> bool:
        return any(p.writes for p in self.plans.values())

    def agreed(self) -> bool:
        """Whether to apply the plan: a dry run never does; a run that cannot ask needs --yes."""
        c, ui = self.consent, self.ui
        if c.dry_run:
            ui.info("Dry run: nothing was changed." if self.writes else "Dry run: nothing to change.")
            return False
        if not self.writes:
            ui.info(c.idle)
        elif not c.interactive and not c.yes:
            # Without a terminal nobody can confirm: only --yes is consent.
            raise UserError("Nothing was changed: a run that cannot ask (no terminal, --non-interactive or --output "
                            "json) applies its plan only with --yes, so pass --yes to apply it, or --dry-run to only "
                            "see it.", BAD_INPUT)
        elif not c.yes and not ui.confirm("Apply this plan?", default=True):
            raise UserError("Nothing was changed: the plan was not confirmed.", OK)
        return True

    # -- apply ---------------------------------------------------------------------------------------
    def apply(self) -> None:
        if self.together:
            self.apply_together()
            return
        skipped: dict[str, str] = {}  # step key -> the title of the skipped step it was skipped with
        for s, res in zip(self.steps, self.results, strict=True):
            self.current = s
            if self.settled(s, res, skipped):
                continue
            self.ui.begin(s.title)
            self.applied(s, res, skipped, self.attempted(s))
        self.current = None

    def settled(self, s: Step, res: dict, skipped: dict[str, str]) -> bool:
        """Whether `s` is settled without a call: skipped with a step it needs, or nothing to do."""
        run, ui = self.run, self.ui
        blocked = next((skipped[k] for k in s.after if k in skipped), None)
        if blocked:
            # A step that needs a skipped one could only fail (or wait for something that never comes).
            skipped[s.key] = blocked
            s.on_skip(run)
            res.update(result="skipped", outcome=f"skipped: depends on {blocked}")
            ui.begin(s.title)
            ui.end("skipped", res["outcome"], s.title)
            return True
        if self.plans[s.key].action == NOTHING:
            s.adopt(run)
            res.update(result="ok", outcome="nothing to do")
            return True
        return False

    def attempted(self, s: Step):
        """The step's outcome, or the error that ended it."""
        try:
            return self.apply_step(s)
        except UserError as e:
            return e

    def applied(self, s: Step, res: dict, skipped: dict[str, str], outcome) -> None:
        """Records how `s` ended; a failure ends the run."""
        ui = self.ui
        if isinstance(outcome, UserError):
            res.update(result="failed", outcome=outcome.message)
            if self.consent.interactive:  # an Abort: what was done, what was not
                self.summary()
            raise outcome
        if outcome is None:
            skipped[s.key] = s.title
            s.on_skip(self.run)
            res.update(result="skipped", outcome="skipped after a failure")
            ui.end("skipped", "skipped", s.title)
        else:
            res.update(result="ok", outcome=outcome)
            ui.end("ok", outcome, s.title)

    def depends(self, s: Step) -> set[str]:
        """The earlier steps `s` waits for: those it is skipped with, those whose fields it reads, those it says
        it follows, and every one before a step that stands alone (and every one before `s` if it does)."""
        keys = [x.key for x in self.steps]
        before = keys[:keys.index(s.key)]
        if s.alone:
            return set(before)
        publishers = {f: x.key for x in self.steps[:len(before)] for f in x.publishes}
        alone = [i for i, x in enumerate(self.steps[:len(before)]) if x.alone]
        keys = ({k for k in (*s.after, *s.follows) if k in before} | {publishers[f] for f in s.reads if f in publishers}
                | (set(before[:alone[-1] + 1]) if alone else set()))
        # Waited for up to the point it names only (an earlier step's whole apply when it stands alone).
        return {f"{k}.{s.early[k]}" if k in s.early and not self._alone(k) else k for k in keys}

    def _alone(self, key: str) -> bool:
        return any(x.alone for x in self.steps if x.key == key)

    def apply_together(self) -> None:
        """Starts each step once the steps it depends on have ended; the first failure lets the steps under way
        end, starts no other and ends the run (as a failure does when steps go one at a time)."""
        import queue
        import threading

        ended: queue.Queue = queue.Queue()
        waiting_on = {s.key: self.depends(s) for s in self.steps}
        todo = list(zip(self.steps, self.results, strict=True))
        done: set[str] = set()  # steps ended, and points reached ("account.exists")
        skipped: dict[str, str] = {}
        running = 0
        failure: BaseException | None = None
        changed = threading.Condition()
        keys = {s.key for s in self.steps}
        under_way: set[str] = set()  # keys of the steps applying now

        def reached(name: str) -> bool:
            return name in done or name.split(".", 1)[0] in done

        def reach(name: str) -> None:
            ended.put((None, name))

        def wait_for(key: str) -> None:
            with changed:
                while key in keys and key not in done:
                    # After a failure a step under way still ends (and may end well); any other never will.
                    if failure is not None and key not in under_way:
                        raise Abandoned(key)
                    changed.wait()

        def mark(name: str) -> None:
            with changed:
                done.add(name)
                changed.notify_all()

        def ended_now(key: str) -> None:
            with changed:
                under_way.discard(key)
                changed.notify_all()

        def work(s: Step):
            try:
                self.ui.begin(s.title)
                outcome = self.attempted(s)
            except BaseException as e:  # a bug: raised by the run itself, never waited for
                outcome = e
            ended.put((s, outcome))

        before = self.run.reach, self.run.wait_for
        self.run.reach, self.run.wait_for = reach, wait_for
        try:
            while True:
                progressed = failure is None
                while progressed:
                    progressed = False
                    for s, res in [t for t in todo if all(reached(n) for n in waiting_on[t[0].key])]:
                        todo.remove((s, res))
                        progressed = True
                        self.current = s
                        if self.settled(s, res, skipped):
                            mark(s.key)
                        else:
                            running += 1
                            self.running.append(s)
                            with changed:
                                under_way.add(s.key)
                            mark(f"{s.key}.start")
                            threading.Thread(target=work, args=(s,), daemon=True,
                                             name=f"coiled-setup-{s.key}").start()
                if not running:
                    break
                s, outcome = ended.get()
                if s is None:  # a point reached within a step's apply
                    mark(outcome)
                    continue
                running -= 1
                self.running.remove(s)
                res = next(r for r in self.results if r["step"] == s.key)
                if isinstance(outcome, Abandoned):
                    awaited = next(r for r in self.results if r["step"] == outcome.args[0])
                    res.update(outcome=f"not run: it waits for '{awaited['title']}', which "
                                       f"{'failed' if awaited['result'] == 'failed' else 'did not run'}")
                    ended_now(s.key)
                    continue
                if isinstance(outcome, BaseException) and not isinstance(outcome, UserError):
                    res.update(result="failed", outcome=f"{type(outcome).__name__}: {outcome}")
                    failure = failure or outcome  # raised once the steps under way have ended, like a failure
                    ended_now(s.key)
                    continue
                try:
                    self.applied(s, res, skipped, outcome)
                    mark(s.key)
                except UserError as e:
                    with changed:
                        failure = failure or e
                        changed.notify_all()
                ended_now(s.key)
        finally:
            self.run.reach, self.run.wait_for = before
        self.current = None
        if failure is not None:
            raise failure

    def apply_step(self, step: Step) -> str | None:
        run = self.run
        tries = 0

        def attempt():
            nonlocal tries
            tries += 1
            # A retry follows a fresh observation: an earlier try may have made the change but lost the answer.
            if tries > 1 and self.plan_one(step).action == NOTHING:
                step.adopt(run)
                return "done"
            return step.apply(run)

        while True:
            try:
                return self._retrying(step, attempt)
            except (CloudError, CoiledError, UserError, waiting.TimedOut) as e:
                message, code = self.describe(e)
                if not self.consent.interactive:
                    raise UserError(f"Step '{step.title}' failed: {message}", code) from None
                self.ui.end("failed", message)
                choices = ["Retry", "Abort"] + (["Skip"] if step.optional else [])
                choice = self.ui.select(f"'{step.title}' failed. What now?", choices)
                if choice == "Abort":
                    raise UserError(f"Stopped at '{step.title}': {message}", code) from None
                if choice == "Skip":
                    return None
                self.ui.begin(step.title)
                self.observe(step)

    def describe(self, e: Exception) -> tuple[str, int]:
        if isinstance(e, CloudError):
            return explain(e, self.project)
        if isinstance(e, waiting.TimedOut):
            return (f"timed out {e.args[0]} after {int(self.consent.wait_timeout)} s: run again (it resumes) or "
                    "raise --wait-timeout.", 1)
        return e.message, e.code

    # -- report --------------------------------------------------------------------------------------
    def summary(self) -> None:
        self.ui.summary([(r["title"], r["result"], r["outcome"]) for r in self.results])

    def under_way(self) -> list[str]:
        """The titles of the steps being applied now."""
        if self.together:
            return [s.title for s in list(self.running)]
        return [self.current.title] if self.current else []

    def done(self) -> list[str]:
        """The titles of the steps that changed something."""
        return [r["title"] for r in self.results if r["result"] == "ok" and r["action"] not in (NOTHING, CHECK)]
