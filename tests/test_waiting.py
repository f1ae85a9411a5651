"""Polling backoff: grows from the first delay, jittered, and never sleeps longer than its cap, so what is
awaited is seen within one capped delay (bench/run.py measures it end to end)."""

import itertools

from coiled_setup import waiting


def test_delays_grow_and_never_exceed_the_cap():
    ds = list(itertools.islice(waiting.delays(), 200))
    assert 0.08 <= ds[0] <= 0.12
    assert all(d <= waiting.MAX_DELAY_S for d in ds)
    assert max(ds) > 0.9 * waiting.MAX_DELAY_S
    assert len({round(d, 6) for d in ds[20:]}) > 1  # still jittered at the cap



def test_without_a_spinner_a_wait_says_so_at_intervals(monkeypatch):
    """Output that is not a terminal (a CI log) gets a heartbeat line during a wait, never silence."""
    import io
    import time

    from rich.console import Console

    from coiled_setup import ui as ui_module
    from coiled_setup import waiting

    monkeypatch.setattr(ui_module, "HEARTBEAT_S", 0.2)
    ui = ui_module.Ui(interactive=False)
    ui.console = Console(file=io.StringIO(), force_terminal=False, width=200)
    ui.begin("Permissions in effect")
    ready = time.monotonic() + 1.6
    waiting.poll(lambda: time.monotonic() >= ready, timeout=5, what="waiting for the permissions", tick=ui.tick)
    beats = [ln for ln in ui.console.file.getvalue().splitlines() if ln.startswith("… Permissions in effect: ")]
    assert len(beats) >= 3, beats
    assert all(" s so far, up to 5 s" in b for b in beats), beats


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def polls_until(ready_at: float, expected: float | None, latency: float = 0.1) -> tuple[int, float]:
    """(polls, overshoot) of a wait for something true from `ready_at` on, each poll taking `latency`."""
    from coiled_setup import retry

    clock = FakeClock()
    seen = []

    def check():
        clock.t += latency
        if clock.t >= ready_at:
            seen.append(clock.t)
            return True
        return False

    n = 0

    def counted():
        nonlocal n
        n += 1
        return check()

    with retry.use(retry.Policy(clock=clock.now, sleep=clock.sleep)):
        waiting.poll(counted, timeout=600, what="waiting", expected=expected)
    return n, seen[0] - ready_at


def test_a_wait_with_an_expected_end_polls_densely_only_near_it():
    """A minute's wait for IAM, expected at a minute: about 20 polls rather than 70, seen within a dense poll."""
    dense, _ = polls_until(60.0, None)
    paced, over = polls_until(60.0, 60.0)
    assert dense > 60
    assert paced <= 25
    assert over <= waiting.MAX_DELAY_S + 0.1
    # Earlier than expected: seen at most SPARSE_MAX_S late; later: still polled, sparser the later.
    assert polls_until(20.0, 60.0)[1] <= waiting.SPARSE_MAX_S + 0.1
    n, over = polls_until(200.0, 60.0)
    assert n < 80 and over <= waiting.SPARSE_MAX_S + 0.1
