"""What keeps the daemon and the user's data to themselves: the listen endpoint read strictly, a stale
pid file never turning `daemon stop` on a stranger, private files whatever the umask, a daemon that a
client starts reaped when it stops (no zombie for `daemon stop` to wait on)."""

import os
import stat
import subprocess
import sys
import time

import platformdirs
import pytest

from daemon.serve.listen import ListenError, check_listen_endpoint
from mtpchat.client import daemon_answers, start_daemon
from mtpchat.paths import daemon_log, data_dir, pid_file
from mtpchat.store import Store
from tests.helpers import start_daemon_process

ACCEPTED = [("ipc:///run/user/1000/mtpchat/mtpchatd.sock", False), ("tcp://127.0.0.1:5555", False),
            ("tcp://127.8.0.1:5555", False), ("tcp://[::1]:5555", False), ("tcp://0.0.0.0:5555", True),
            ("tcp://192.168.1.4:5555", True)]
REFUSED = [("tcp://127.0.0.1:1;0.0.0.0:5555", True, "one endpoint"),  # zmq would bind both
           ("tcp://127.0.0.1:1;127.0.0.1:5555", False, "one endpoint"),
           ("tcp://*:5555", True, "not an IP address"), ("tcp://eth0:5555", True, "not an IP address"),
           ("tcp://localhost:5555", False, "not an IP address"),
           ("tcp://0.0.0.0:5555", False, "needs ZeroMQ CURVE keys"), ("tcp://[::]:5555", False, "CURVE"),
           ("tcp://127.0.0.1:0", False, "one endpoint"), ("tcp://127.0.0.1", False, "one endpoint"),
           ("udp://127.0.0.1:5555", False, "one endpoint"), ("ipc://", False, "one ipc://PATH"),
           ("ipc:///tmp/a;tcp://0.0.0.0:1", False, "one ipc://PATH")]


@pytest.mark.parametrize(("endpoint", "curve"), ACCEPTED)
def test_listen_endpoints_accepted(endpoint, curve):
    check_listen_endpoint(endpoint, curve)


@pytest.mark.parametrize(("endpoint", "curve", "says"), REFUSED)
def test_listen_endpoints_refused_with_a_reason(endpoint, curve, says):
    with pytest.raises(ListenError, match=says):
        check_listen_endpoint(endpoint, curve)


def test_mtpchatd_alone_serves_and_refuses_a_second_endpoint_hidden_after_a_semicolon(tmp_path):
    refused = start_daemon_process(tmp_path, "--listen", "tcp://127.0.0.1:1;0.0.0.0:47907")
    assert refused.wait(timeout=60) == 2
    assert "give one endpoint" in refused.stdout.read()
    env = dict(os.environ, MTPCHAT_HOME=str(tmp_path))
    alone = subprocess.run([sys.executable, "-m", "daemon", "--listen", "tcp://*:47907"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert alone.returncode == 2 and "interface names and * are refused" in alone.stderr
    assert "Traceback" not in alone.stderr


def test_daemon_stop_never_signals_a_process_that_is_not_mtpchatd():
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file().write_text(f"{stranger.pid}\n")
        done = subprocess.run([sys.executable, "-m", "mtpchat.cli", "daemon", "stop"], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"names process {stranger.pid}, which is not mtpchatd" in done.stdout
        assert stranger.poll() is None  # still running: it got no SIGTERM
    finally:
        stranger.kill()
        stranger.wait()


def test_conversations_and_log_are_private_whatever_the_umask():
    previous = os.umask(0o022)
    try:
        store = Store()
        store.db.execute("CREATE TABLE IF NOT EXISTS probe (x)")  # the first write creates -wal and -shm
        store.db.execute("INSERT INTO probe VALUES (1)")
        files = [store.path, store.path.with_name(store.path.name + "-wal"),
                 store.path.with_name(store.path.name + "-shm")]
        assert [stat.S_IMODE(f.stat().st_mode) for f in files] == [0o600] * 3
        assert stat.S_IMODE(data_dir().stat().st_mode) == 0o700
        store.close()
        assert stat.S_IMODE(daemon_log().parent.stat().st_mode) == 0o700
    finally:
        os.umask(previous)


def test_no_runtime_dir_warning_on_every_command_without_xdg_runtime_dir(tmp_path):
    """Over ssh without logind XDG_RUNTIME_DIR is unset: platformdirs falls back to /tmp/runtime-<uid>
    with a warning that every `mtpchat ask` printed; the socket's directory is private (0700) anyway.
    In a fresh interpreter, since platformdirs warns once per process."""
    env = {key: value for key, value in os.environ.items() if key not in ("MTPCHAT_HOME", "XDG_RUNTIME_DIR")}
    env["HOME"] = str(tmp_path)

    def run(code: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-W", "error", "-c", code], env=env, capture_output=True,
                              text=True, timeout=60)

    ours = run("from mtpchat.paths import _root; print(_root('runtime'))")
    assert ours.returncode == 0 and ours.stdout.strip().endswith("mtpchat"), ours.stderr
    if hasattr(platformdirs, "RuntimeDirWarning"):  # the releases that warn: so this cannot pass idly
        direct = run("import platformdirs; platformdirs.user_runtime_dir('mtpchat')")
        assert direct.returncode != 0 and "XDG_RUNTIME_DIR is not set" in direct.stderr


def test_a_daemon_started_by_a_long_lived_client_stops_without_a_zombie(tmp_path, tiny):
    home = tmp_path / "home"
    (home / "config").mkdir(parents=True)
    (home / "config" / "config.toml").write_text(
        f'[models.dense]\npath = "{tiny["qwen3.6-dense-tiny"]}"\nload_at_start = false\n')
    start_daemon()  # this test process plays the TUI: it started the daemon and lives on
    pid = int(pid_file().read_text())
    assert stat.S_IMODE(daemon_log().stat().st_mode) == 0o600
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mtpchat.cli", "daemon", "stop"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 20  # a zombie would hold `stop` for its whole 30 s
    assert not os.path.exists(f"/proc/{pid}") and not daemon_answers(timeout_s=0.2)
