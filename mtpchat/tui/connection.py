"""Is mtpchatd there? A background thread asks once a second and tells the app.

At start it launches the daemon when none answers (unless told not to: with --ssh the remote side
does that), reporting progress. Afterwards it only watches: when the daemon dies the app says so,
and when it answers again (restarted by the user, `mtpchat daemon start`, or the app's own
"start daemon" command) the app is connected again with nothing else to do. A daemon that does not
answer but whose process runs (a long prefill) is shown busy, never offline: offline invites a start.
"""

from __future__ import annotations

import threading

from textual.message import Message

from mtpchat.client import DOWN, DaemonClient, DaemonUnavailable, daemon_liveness, start_daemon

INTERVAL_S = 1.0
TIMEOUT_S = 3.0  # a daemon busy loading or prefilling may take a moment to answer


class DaemonState(Message):
    """state: connecting | starting | connected | busy | offline; status: the daemon's status map."""

    def __init__(self, state: str, status: dict | None = None, detail: str = ""):
        super().__init__()
        self.state, self.status, self.detail = state, status, detail


class ConnectionMonitor:
    def __init__(self, target, endpoint: str | None, autostart: bool):
        self.target, self.endpoint, self.autostart = target, endpoint, autostart
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._start_requested = threading.Event()
        self._launch_error = ""  # why the last start failed: shown until the daemon answers
        self.thread = threading.Thread(target=self._run, name="mtpchat-connection", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def poke(self) -> None:
        """Ask again now (after a load request, say) instead of at the next tick."""
        self._wake.set()

    def start_daemon(self) -> None:
        self._start_requested.set()
        self._wake.set()

    def _post(self, state: str, status: dict | None = None, detail: str = "") -> None:
        self.target.post_message(DaemonState(state, status, detail))

    def _launch(self) -> None:
        phase, dots = ["starting mtpchatd"], [0]

        def progress(text: str) -> None:  # a phase ("mtpchatd is busy…", "starting mtpchatd"), then dots
            if text != ".":
                phase[0] = text.rstrip("…")
            dots[0] += 1
            self._post("busy" if "busy" in phase[0] else "starting", detail=f"{phase[0]}{'.' * (dots[0] % 4)}")

        try:
            start_daemon(self.endpoint, progress=progress)
        except DaemonUnavailable as exc:
            self._launch_error = str(exc)

    def _run(self) -> None:
        if self.autostart:
            self._start_requested.set()
        while not self._stop.is_set():
            if self._start_requested.is_set():
                self._start_requested.clear()
                self._launch()
            try:
                with DaemonClient(self.endpoint) as client:
                    status = client.request("status", timeout_ms=int(TIMEOUT_S * 1000))
                self._post("connected", status)
                self._launch_error = ""
            except DaemonUnavailable:
                if daemon_liveness(self.endpoint) == DOWN:
                    self._post("offline", detail=self._launch_error or "mtpchatd is not running")
                else:
                    self._post("busy", detail=f"mtpchatd is busy (not answering within {TIMEOUT_S:g} s)")
            self._wake.wait(INTERVAL_S)
            self._wake.clear()
