"""ZeroMQ CURVE keys: what lets the daemon listen beyond loopback without opening it to anyone.

The layout mirrors ssh. In the config dir, `curve/` (0700) holds this machine's certificates —
`server.key` / `server.key_secret` for a daemon, `client.key` / `client.key_secret` for clients —
and `curve/authorized/`, the public client keys a daemon accepts. `mtpchatd keys` creates both pairs
(the local client key is authorized at once). To let a laptop in, copy the laptop's `client.key` into
the workstation's `curve/authorized/` and the workstation's `server.key` into the laptop's `curve/`.

A daemon on TCP uses CURVE whenever it has a server key (it must for a non-loopback address); a
client on TCP uses it whenever it holds the server's public key: traffic is encrypted, the server is
authenticated by its key and clients by the authorized list (others are dropped by ZAP).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from mtpchat.paths import config_dir


def curve_dir() -> Path:
    return config_dir() / "curve"


def authorized_dir() -> Path:
    return curve_dir() / "authorized"


def create_keys() -> dict[str, Path]:
    """Create the server and client pairs that are missing; the paths of the public keys."""
    directory = curve_dir()
    authorized_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.chmod(0o700)
    for name in ("server", "client"):  # a server.key alone is a remote daemon's: it is kept
        if not (directory / f"{name}.key").exists():
            zmq.auth.create_certificates(directory, name)
            (directory / f"{name}.key_secret").chmod(0o600)
    local = authorized_dir() / "local-client.key"
    if not local.exists():
        shutil.copyfile(directory / "client.key", local)
    return {"server": directory / "server.key", "client": directory / "client.key"}


def has_server_keys() -> bool:
    return (curve_dir() / "server.key_secret").exists()


def secure_server(context: zmq.Context, socket: zmq.Socket) -> ThreadAuthenticator:
    """Make `socket` (before bind) a CURVE server that admits only authorized client keys."""
    public, secret = zmq.auth.load_certificate(curve_dir() / "server.key_secret")
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve(domain="*", location=str(authorized_dir()))
    socket.curve_secretkey, socket.curve_publickey, socket.curve_server = secret, public, True
    return authenticator


def secure_client(socket: zmq.Socket) -> bool:
    """Use CURVE on `socket` (before connect) if the server's public key is here; False otherwise."""
    server_key = curve_dir() / "server.key"
    client_secret = curve_dir() / "client.key_secret"
    if not server_key.exists():
        return False
    if not client_secret.exists():
        raise FileNotFoundError(f"{server_key} is here but no client key: run `mtpchatd keys` to create one, "
                                "then authorize its client.key on the daemon's machine")
    socket.curve_serverkey = zmq.auth.load_certificate(server_key)[0]
    socket.curve_publickey, socket.curve_secretkey = zmq.auth.load_certificate(client_secret)
    return True
