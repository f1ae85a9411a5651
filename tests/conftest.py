import os

import pytest

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


@pytest.fixture
def make_sandbox(tmp_path):
    """Starts sandboxes (scenario dict or path, Config fields as keywords); stops them after the test."""
    from coiled_setup.sandbox import Config, Sandbox

    started = []

    def make(scenario=None, **config):
        sb = Sandbox(scenario, Config(**config), state_dir=tmp_path / f"sandbox{len(started)}").start()
        started.append(sb)
        return sb

    yield make
    for sb in started:
        sb.stop()


@pytest.fixture
def sandbox(make_sandbox):
    return make_sandbox()
