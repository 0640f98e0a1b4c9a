"""`mtpchat --ssh user@host`: the TUI here, the daemon on the workstation, one ssh tunnel between.

The system `ssh` does all the work, so the user's agent, keys and ~/.ssh/config apply as they are:
first `ssh HOST mtpchat daemon start --json` starts the remote daemon if needed and tells us its
socket; then `ssh -N -L LOCAL:REMOTE HOST` forwards a private local unix socket to it (OpenSSH
forwards unix sockets since 6.7). The app then talks to the local socket as if the daemon were here.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from pathlib import Path

from mtpchat.paths import runtime_dir

SSH_OPTIONS = ["-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes", "-o", "ServerAliveInterval=15"]


class TunnelError(Exception):
    """The remote daemon could not be reached; the message says what to try."""


def remote_start_command(host: str, remote_mtpchat: str = "mtpchat") -> list[str]:
    return ["ssh", host, f"{remote_mtpchat} daemon start --json"]


def tunnel_command(host: str, local_socket: Path, remote_socket: str) -> list[str]:
    return ["ssh", "-N", *SSH_OPTIONS, "-L", f"{local_socket}:{remote_socket}", host]


def local_socket_for(host: str) -> Path:
    return runtime_dir() / f"ssh-{re.sub(r'[^A-Za-z0-9_.@-]', '_', host)}.sock"


def remote_socket(start_output: str, host: str) -> str:
    """The remote daemon's socket path, from `mtpchat daemon start --json` run there."""
    try:
        status = json.loads(start_output.strip().splitlines()[-1])
        endpoint = status["endpoint"]
    except (IndexError, ValueError, KeyError, TypeError):
        raise TunnelError(f"{host}: `mtpchat daemon start --json` printed no daemon status: "
                          f"{start_output.strip()[:200]!r}") from None
    if not endpoint.startswith("ipc://"):
        raise TunnelError(f"{host}: the daemon listens on {endpoint}; --ssh needs its default ipc socket")
    return endpoint.removeprefix("ipc://")


def open_tunnel(host: str, remote_mtpchat: str = "mtpchat", wait_s: float = 30.0) -> tuple[str, subprocess.Popen]:
    """Start the remote daemon if needed and forward its socket; returns (local endpoint, ssh process)."""
    started = subprocess.run(remote_start_command(host, remote_mtpchat), capture_output=True, text=True)
    if started.returncode != 0:
        raise TunnelError(f"`{shlex.join(remote_start_command(host, remote_mtpchat))}` failed "
                          f"({started.returncode}): {started.stderr.strip()[-300:]}\n"
                          "Check that you can ssh there and that mtpchat is on the remote PATH "
                          "(or pass --remote-mtpchat PATH)")
    local = local_socket_for(host)
    local.unlink(missing_ok=True)
    process = subprocess.Popen(tunnel_command(host, local, remote_socket(started.stdout, host)),
                               stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + wait_s
    while not local.exists():
        if process.poll() is not None:
            raise TunnelError(f"ssh tunnel to {host} ended: {process.stderr.read().strip()[-300:]}")
        if time.monotonic() > deadline:
            process.terminate()
            raise TunnelError(f"ssh tunnel to {host} did not open within {wait_s:g} s")
        time.sleep(0.05)
    return f"ipc://{local}", process
