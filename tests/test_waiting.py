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
