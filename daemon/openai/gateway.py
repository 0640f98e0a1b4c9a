"""The OpenAI-compatible HTTP API running beside the daemon: uvicorn on a thread of the mtpchatd process.

In the daemon's process because it shares its life: `mtpchatd serve --openai ADDRESS` (or `[openai]
listen` in config.toml) starts and stops both, with one log and no second service to supervise. It is
nonetheless only a client of the daemon's wire protocol (daemon/openai/link.py), with its own asyncio
loop on its own thread, so it never touches the engine and a slow HTTP client never slows the socket
loop. The listening socket is bound here, on the caller's thread, so a port in use or a bad address
fails `mtpchatd` at start with a message instead of dying quietly inside the thread.
"""

from __future__ import annotations

import socket
import threading

import uvicorn
import zmq.asyncio

from daemon.openai.app import create_app
from mtpchat.config import OpenAISettings

STOP_PATIENCE_S = 5.0  # streams still open at shutdown get this long to finish (the daemon ended them)


class Gateway:
    def __init__(self, settings: OpenAISettings, endpoint: str):
        """Bind `settings.listen` (OSError when it cannot be) and read the API key (ValueError)."""
        api_key, (host, port) = settings.api_key(), settings.address
        self.listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.context = zmq.asyncio.Context()
        app = create_app(self.context, endpoint, api_key, settings.cors_origins,
                         local_only=settings.api_key_file is None)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=STOP_PATIENCE_S)
        self.server = uvicorn.Server(config)
        self.url = f"http://{settings.listen}/v1"
        self._thread = threading.Thread(target=self._run, name="openai-http", daemon=True)

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.listener])
        finally:
            self.context.destroy(linger=0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(STOP_PATIENCE_S + 1)
        self.listener.close()
