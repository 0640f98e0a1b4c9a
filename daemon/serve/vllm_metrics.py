"""vLLM's speculative-decoding counters, read from its Prometheus /metrics around one remote request.

vLLM reports no acceptance per request over its OpenAI API by default; it keeps server-wide counters
(vllm/v1/spec_decode/metrics.py, SpecDecodingProm): `vllm:spec_decode_num_drafts`, `..._num_draft_tokens`,
`..._num_accepted_tokens` and `..._num_accepted_tokens_per_pos` (label `position`, from 0), which
prometheus_client exposes with a `_total` suffix, one series per engine core (labels `model_name`,
`engine`); the series are summed, as one vLLM server serves one model. A snapshot before a request and
one after its stream ended give that request's figures, exact while it is the only request the engine
runs. This daemon knows its own streams to an engine (EngineVisits): when another overlapped, the figures
are marked ACCEPTANCE_APPROXIMATE. Clients other than this daemon it cannot see.

A /metrics that does not answer, or answers without these counters (llama-server, SGLang, mtpchatd),
gives no figures: unknown, never zero. Deliberately not known here: which engine is behind a URL — any
engine that exposes these counters is read the same way.
"""

from __future__ import annotations

import re
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass

from mtpchat.protocol import (
    ACCEPTANCE_APPROXIMATE,
    ACCEPTANCE_PER_POSITION,
    ACCEPTANCE_RATE,
    ACCEPTED_PER_POSITION,
    ACCEPTED_TOKENS,
    DRAFTED_TOKENS,
    DRAFTS,
    MEAN_ACCEPTANCE_LENGTH,
)

SCRAPE_TIMEOUT_S = 2.0  # /metrics answers at once; a request waits for the first snapshot at most this long
COUNTERS = {"vllm:spec_decode_num_drafts_total": DRAFTS,
            "vllm:spec_decode_num_draft_tokens_total": DRAFTED_TOKENS,
            "vllm:spec_decode_num_accepted_tokens_total": ACCEPTED_TOKENS}
PER_POSITION = "vllm:spec_decode_num_accepted_tokens_per_pos_total"
SAMPLE = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?")  # name{labels} value [time]
POSITION = re.compile(r'(?:^|,)\s*position="(\d+)"')
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # as the chat request: direct


@dataclass(frozen=True)
class Counters:
    """One snapshot: the three counters under wire keys, accepted tokens by draft position."""
    totals: dict[str, float]
    per_position: dict[int, float]


def metrics_url(base_url: str) -> str:
    """The engine's /metrics: its OpenAI base URL without the trailing `/v1`."""
    parts = urllib.parse.urlsplit(base_url)
    path = parts.path.rstrip("/").removesuffix("/v1")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"{path}/metrics", "", ""))


def parse(text: str) -> Counters | None:
    """The spec-decode counters of a Prometheus text exposition; None without all three totals."""
    totals: dict[str, float] = {}
    per_position: dict[int, float] = {}
    for line in text.splitlines():
        if (sample := SAMPLE.fullmatch(line.strip())) is None:  # comments, blank lines
            continue
        name, labels, value = sample.groups()
        if name in COUNTERS:
            totals[COUNTERS[name]] = totals.get(COUNTERS[name], 0.0) + float(value)
        elif name == PER_POSITION and (position := POSITION.search(labels or "")):
            index = int(position[1])
            per_position[index] = per_position.get(index, 0.0) + float(value)
    return Counters(totals, per_position) if len(totals) == len(COUNTERS) else None


def scrape(url: str, headers: dict) -> Counters | None:
    """A snapshot of the counters at `url`; None when it does not answer them."""
    try:
        with _NO_PROXY.open(urllib.request.Request(url, headers=headers), timeout=SCRAPE_TIMEOUT_S) as response:
            return parse(response.read().decode("utf-8", "replace"))
    except (OSError, ValueError):  # no answer, an HTTP error (URLError is an OSError), a value not a number
        return None


def request_stats(before: Counters, after: Counters, approximate: bool) -> dict:
    """Wire stats from the counters' movement between two snapshots (empty if one went back: a restart).
    Per position as vLLM computes it: accepted at position j / drafts."""
    moved = {key: after.totals[key] - before.totals[key] for key in COUNTERS.values()}
    if any(value < 0 for value in moved.values()):
        return {}
    stats = {key: round(value) for key, value in moved.items()}
    drafts, drafted, accepted = stats[DRAFTS], stats[DRAFTED_TOKENS], stats[ACCEPTED_TOKENS]
    if drafted:
        stats[ACCEPTANCE_RATE] = accepted / drafted
    positions = sorted(after.per_position)
    if drafts:
        stats[MEAN_ACCEPTANCE_LENGTH] = 1 + accepted / drafts
        if positions and positions == list(range(len(positions))):
            per_position = [round(after.per_position[j] - before.per_position.get(j, 0.0)) for j in positions]
            stats[ACCEPTED_PER_POSITION] = per_position
            stats[ACCEPTANCE_PER_POSITION] = [count / drafts for count in per_position]
    if approximate:
        stats[ACCEPTANCE_APPROXIMATE] = True
    return stats


@dataclass(eq=False)
class Visit:
    """One stream's time at an engine; `overlapped` once another of this daemon's streams was there too."""
    engine: str
    overlapped: bool = False


class EngineVisits:
    """Which of this daemon's streams are at each engine (keyed by its /metrics URL), for the reader threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self._present: dict[str, list[Visit]] = {}

    def enter(self, engine: str) -> Visit:
        visit = Visit(engine)
        with self._lock:
            present = self._present.setdefault(engine, [])
            for other in present:
                other.overlapped = visit.overlapped = True
            present.append(visit)
        return visit

    def leave(self, visit: Visit) -> None:
        with self._lock:
            present = self._present[visit.engine]
            present.remove(visit)
            if not present:
                del self._present[visit.engine]
