"""Busy is not dead, and dead is noticed: clients against fake daemons (tests/fake_daemons.py) that hold
the pid-file lock like mtpchatd but either never answer (a long prefill) or crash after one chunk."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mtpchat import client
from mtpchat.client import BUSY, DOWN, DaemonUnavailable, daemon_liveness, local_daemon_pid, start_daemon
from mtpchat.paths import config_dir, daemon_log, pid_file
from mtpchat.tui.connection import ConnectionMonitor
from mtpchat.tui.streaming import ReplyFeed, read_daemon_reply
from mtpchat.tui.top_bar import top_bar

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake(request):
    """Start the fake daemon named by the test's parameter; it is killed afterwards."""
    process = subprocess.Popen([sys.executable, "-m", "tests.fake_daemons", request.param], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    yield process
    process.kill()
    process.wait()


def wait_until(predicate, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {predicate}")


def _cli(*args, timeout_s=60):
    return subprocess.run([sys.executable, "-m", "mtpchat.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout_s)


@pytest.mark.parametrize("fake", ["busy"], indirect=True)
def test_a_busy_daemon_is_busy_not_dead_and_never_doubled(fake, monkeypatch):
    assert local_daemon_pid() == fake.pid
    assert daemon_liveness() == BUSY
    status = _cli("daemon", "status")
    assert status.returncode == 0 and "not running" not in status.stdout
    assert f"running, busy (pid {fake.pid}" in status.stdout

    def no_second_daemon(*args, **kwargs):
        raise AssertionError(f"a second daemon was launched: {args}")

    monkeypatch.setattr(client.subprocess, "Popen", no_second_daemon)
    notes = []
    started = time.monotonic()
    with pytest.raises(DaemonUnavailable, match=f"pid {fake.pid}\\) is busy and did not answer within 1.5 s"):
        start_daemon(busy_wait_s=1.5, progress=notes.append)
    assert time.monotonic() - started < 10
    assert notes[0] == "mtpchatd is busy…"
    assert fake.poll() is None and pid_file().read_text() == f"{fake.pid}\n"


@pytest.mark.parametrize("fake", ["busy"], indirect=True)
def test_the_tui_watcher_shows_a_busy_daemon_as_busy(fake):
    states = []

    class Target:
        def post_message(self, message):
            states.append((message.state, message.detail))

    monitor = ConnectionMonitor(Target(), None, autostart=False)
    monitor.start()
    try:
        state, detail = wait_until(lambda: states and states[-1])
    finally:
        monitor.stop()
    assert state == "busy" and "not answering" in detail
    bar = str(top_bar((state, detail), None, "", "dense", None, "f9"))
    assert "busy" in bar and "press f9" not in bar


@pytest.mark.parametrize("fake", ["dies"], indirect=True)
def test_ask_reports_a_daemon_that_dies_mid_reply_within_seconds(fake):
    started = time.monotonic()
    ask = _cli("ask", "Tell me a story", timeout_s=30)
    assert time.monotonic() - started < 10
    assert ask.returncode == 1
    assert ask.stdout.startswith("Once")
    assert "mtpchatd died mid-reply (see " in ask.stderr and "mtpchatd.log" in ask.stderr
    assert fake.wait(timeout=5) == 1


@pytest.mark.parametrize("fake", ["dies"], indirect=True)
def test_the_tui_reader_reports_a_daemon_that_dies_mid_reply(fake):
    feed = ReplyFeed()
    reader = threading.Thread(target=read_daemon_reply, args=(feed, None, {"messages": []}))
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive()
    batch = feed.drain()
    assert batch.text == "Once" and batch.outcome.status == "interrupted"
    assert "died mid-reply" in batch.outcome.error


def test_a_stale_pid_file_is_no_daemon():
    pid_file().write_text(f"{os.getpid()}\n")  # a live process, but nobody holds the lock
    assert local_daemon_pid() is None


def test_an_ipc_endpoint_without_its_socket_is_down_without_waiting_for_an_answer(tmp_path, monkeypatch):
    """The daemon makes its ipc socket when it binds: no file and no daemon process is DOWN at once, where a
    non-default endpoint would otherwise get REMOTE_HELLO_S to answer; a stale file is probed as before."""
    probes = []
    monkeypatch.setattr(client, "daemon_answers", lambda endpoint, timeout_s: probes.append(timeout_s) or False)
    endpoint = f"ipc://{tmp_path}/mtpchatd.sock"
    assert daemon_liveness(endpoint) == DOWN and probes == []
    (tmp_path / "mtpchatd.sock").touch()
    assert daemon_liveness(endpoint) == DOWN and probes == [0.5, client.REMOTE_HELLO_S]
    probes.clear()
    assert daemon_liveness("ipc://@mtpchat-abstract") == DOWN and probes == [0.5, client.REMOTE_HELLO_S]


def test_a_daemon_that_stops_at_its_start_is_reported_with_its_reason():
    """A real mtpchatd started on a config.toml it refuses: the error quotes what it wrote to its log in this
    start (not an earlier run's lines), so `ask` and the TUI say why without the user opening the log."""
    config_dir().mkdir(parents=True, exist_ok=True)
    (config_dir() / "config.toml").write_text('[models.big]\npath = "/nowhere"\nquantize = "int3"\n')
    daemon_log().parent.mkdir(parents=True, exist_ok=True)
    daemon_log().write_text("mtpchatd: an earlier run's last words\n")
    with pytest.raises(DaemonUnavailable) as caught:
        start_daemon(wait_s=60)
    assert str(caught.value) == (f"mtpchatd exited with code 1: {config_dir() / 'config.toml'}: model 'big': "
                                 f"quantize must be one of 'none', 'int8', 'int4', 'fp8', got 'int3'; "
                                 f"see {daemon_log()}")
