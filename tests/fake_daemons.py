"""Stand-ins for mtpchatd that inject one fault each, for the liveness tests (tests/test_liveness.py).

Run as `python -m tests.fake_daemons busy|dies` with MTPCHAT_HOME set. Each does what a real daemon does
first (holds the pid-file lock with its pid in the file, binds the default endpoint) and prints "ready":
- busy: never reads its socket, as today's daemon during a long prefill;
- dies: answers hello, and a generate with one chunk, then exits at once (a crash mid-reply: the pid
  file stays, its lock goes with the process).
"""

from __future__ import annotations

import fcntl
import os
import sys
import time

import zmq

from mtpchat.paths import default_endpoint, pid_file
from mtpchat.protocol import pack, reply, unpack


def main(kind: str) -> None:
    lock = open(pid_file(), "a+")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    socket = zmq.Context.instance().socket(zmq.ROUTER)
    socket.bind(default_endpoint())
    print("ready", flush=True)
    if kind == "busy":
        time.sleep(3600)
    while True:
        peer, frame = socket.recv_multipart()
        request = unpack(frame)
        if request["op"] == "hello":
            socket.send_multipart([peer, pack(reply(request["id"], "hello", pid=os.getpid()))])
        elif request["op"] == "generate":
            socket.send_multipart([peer, pack(reply(request["id"], "chunk", text="Once"))])
            time.sleep(0.2)  # let the chunk leave before the crash
            os._exit(1)


if __name__ == "__main__":
    main(sys.argv[1])
