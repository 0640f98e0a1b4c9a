"""Models named by path: one checkpoint spelled several ways is one model, a name that is no checkpoint
is refused before it is added, and at most `max_path_models` are kept (least recently used goes first,
never one that is streaming) — so neither memory nor `status` grows with the names clients try."""

from __future__ import annotations

import pytest

from daemon.serve.registry import ModelRegistry
from mtpchat.config import Config, DaemonLimits
from mtpchat.protocol import ProtocolError
from tests.helpers import wait_until


def _registry(max_path_models: int) -> ModelRegistry:
    return ModelRegistry(Config(daemon=DaemonLimits(max_path_models=max_path_models)))


def test_one_checkpoint_spelled_three_ways_is_one_model(tiny):
    path = tiny["qwen3.6-dense-tiny"]
    registry = _registry(2)
    entries = {id(registry.entry(spelling)) for spelling in (str(path), f"{path}/", f"{path.parent}/./{path.name}")}
    assert len(entries) == 1
    assert [name for name in registry.entries if "/" in name] == [str(path.resolve())]


def test_a_name_that_is_no_checkpoint_is_refused_and_not_kept():
    registry = _registry(2)
    for n in range(50):
        with pytest.raises(ProtocolError) as refused:
            registry.entry(f"/nowhere/{n}")
        assert refused.value.code == "unknown_model" and "not found" in refused.value.message
    assert set(registry.entries) == {"demo", "tiny"}


def test_the_least_recently_used_path_model_makes_room_unless_it_is_streaming(tiny):
    dense, moe = str(tiny["qwen3.6-dense-tiny"].resolve()), str(tiny["qwen3.6-moe-tiny"].resolve())
    registry = _registry(1)
    first = registry.load(registry.entry(dense).settings.name)
    wait_until(lambda: first.state == "resident", 60)
    with pytest.raises(ProtocolError) as refused:
        registry.entry(moe, in_use={dense})
    assert refused.value.code == "busy"
    assert registry.entry(moe).settings.name == moe  # dense was idle: unloaded and forgotten
    assert dense not in registry.entries and first.model is None and first.state == "unloaded"
