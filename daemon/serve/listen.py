"""Which endpoint the daemon may listen on, read strictly, before anything is bound.

ZeroMQ binds more than a URL parser sees: `tcp://127.0.0.1:1;0.0.0.0:5555` binds port 5555 on every
interface, `tcp://*:P` and `tcp://eth0:P` name interfaces. So an endpoint is accepted only as exactly
one `ipc://PATH`, or one `tcp://ADDRESS:PORT` whose address is a literal IP; without CURVE keys that
address must be loopback (anyone who can reach the socket can generate and load checkpoints).
"""

from __future__ import annotations

import ipaddress
import re

_TCP = re.compile(r"tcp://(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<v4>[^:\[\];]+)):(?P<port>[0-9]{1,5})")


class ListenError(ValueError):
    pass


def check_listen_endpoint(endpoint: str, curve: bool) -> None:
    """Raise ListenError saying what to do unless mtpchatd may bind `endpoint` (with CURVE or not)."""
    if endpoint.startswith("ipc://"):
        if ";" in endpoint or len(endpoint) == len("ipc://"):
            raise ListenError(f"{endpoint!r}: give one ipc://PATH")
        return
    match = _TCP.fullmatch(endpoint)
    if match is None or not 0 < int(match["port"]) < 65536:
        raise ListenError(f"{endpoint!r}: give one endpoint, ipc://PATH or tcp://ADDRESS:PORT "
                          "with a literal IP address (e.g. tcp://127.0.0.1:5555)")
    host = match["v6"] or match["v4"]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ListenError(f"{endpoint!r}: {host!r} is not an IP address; name the address to listen on, "
                          "e.g. tcp://127.0.0.1:5555 (interface names and * are refused)") from None
    if not address.is_loopback and not curve:
        raise ListenError(f"refusing to listen on {endpoint}: a non-loopback address needs ZeroMQ CURVE keys; "
                          "run `mtpchatd keys` (see mtpchat/curve.py), or use tcp://127.0.0.1:PORT with an ssh tunnel")
