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

