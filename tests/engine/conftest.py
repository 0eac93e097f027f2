"""Fixtures of the engine tests (train_net.py, demo.py, the trainer)."""

import pytest

from cli_cases import load_script


@pytest.fixture
def train_net_dry(monkeypatch):
    """train_net.py (the module load_script keeps) whose launch is recorded instead of run, for
    this test only: after train_net_dry.cli(argv), train_net_dry.launched lists each launch
    call's arguments."""
    train_net = load_script("train_net.py")
    launched = []
    monkeypatch.setattr(train_net, "launched", launched, raising=False)
    monkeypatch.setattr(train_net, "launch", lambda *args, **kwargs: launched.append(args))
    return train_net
