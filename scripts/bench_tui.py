"""Does the chat view keep up? Stream a long Markdown reply at a fixed token rate through the TUI.

A stand-in source plays the daemon: it releases tokens at --rate tok/s in chunks every 30 ms (the
daemon's flush interval), with per-token provenance and running stats, into the same feed the real
reader fills; the app (headless, fixed size) renders it as it would a real reply. Reported, as JSON:
render lag (chunk arrival -> on screen: mean, p50, p95, max), how long after the last token the
reply was fully rendered, and frames. No daemon, no model: this measures the view alone.

    .venv/bin/python scripts/bench_tui.py --rate 400 --tokens 4000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtpchat.protocol import (  # noqa: E402
    ACCEPTANCE_PER_POSITION,
    ACCEPTANCE_RATE,
    DECODE_TOK_S,
    DRAFT_K,
    GENERATED_TOKENS,
    MEAN_ACCEPTANCE_LENGTH,
)

CHUNK_S = 0.03
PARAGRAPH = ("The verifier checks every drafted token in one pass, and the longest agreeing prefix is kept "
             "together with one token of its own. ").split(" ")
CODE = ["```python\n", "def", " accept", "(draft", ",", " target", "):\n", "    return", " draft", "[:", "n", "]\n",
        "```\n\n"]


def tokens(count: int) -> list[str]:
    """A reply of `count` tokens mixing paragraphs, a list and code blocks, as models write them."""
    out: list[str] = []
    section = 0
    while len(out) < count:
        section += 1
        out += [f"## Part {section}\n\n"] + [w + " " for w in PARAGRAPH * 3] + ["\n\n"]
        out += [f"- point {i} about drafts\n" for i in range(3)] + ["\n"] + CODE
    return out[:count]


def fixed_rate_source(rate: float, count: int):
    def source(feed, fields) -> None:
        pieces = tokens(count)
        started, sent = time.perf_counter(), 0
        while sent < count and not feed.cancel_requested.is_set():
            time.sleep(CHUNK_S)
            due = min(count, int((time.perf_counter() - started) * rate))
            if due > sent:
                chunk = pieces[sent:due]
                feed.add_chunk({"text": "".join(chunk), "pieces": chunk,
                                "drafted": [i % 4 != 3 for i in range(len(chunk))],
                                "stats": {GENERATED_TOKENS: due, DECODE_TOK_S: rate, DRAFT_K: 3,
                                          ACCEPTANCE_RATE: 0.75, MEAN_ACCEPTANCE_LENGTH: 3.25,
                                          ACCEPTANCE_PER_POSITION: [0.9, 0.75, 0.6]}})
                sent = due
        source.finished_at = time.perf_counter()
        from mtpchat.tui.streaming import Outcome

        feed.finish(Outcome("complete"))
    return source


async def run(rate: float, count: int) -> dict:
    from mtpchat.tui.app import MtpChatApp
    from mtpchat.tui.prompt_input import PromptInput

    source = fixed_rate_source(rate, count)

    class BenchApp(MtpChatApp):
        def daemon_ready(self) -> bool:
            return True  # the fixed-rate source stands in for the daemon

        def reply_source(self, feed, fields):
            source(feed, fields)

    app = BenchApp(f"ipc://{tempfile.mkdtemp()}/none.sock", autostart=False)
    async with app.run_test(size=(120, 40)) as pilot:
        app.query_one(PromptInput).text = "Write a long answer"
        await pilot.press("enter")
        started = time.perf_counter()
        while app.chat.reply is not None or not hasattr(source, "finished_at"):
            await pilot.pause(0.01)
        rendered_at = time.perf_counter()
        lags = sorted(app.chat.render_lags)
        text = app.chat.store.messages(app.chat.conversation_id)[-1].text
    return {"rate_tok_s": rate, "tokens": count, "chars": len(text), "stream_s": round(source.finished_at - started, 3),
            "frames": len(lags), "lag_mean_s": round(statistics.fmean(lags), 4),
            "lag_p50_s": round(lags[len(lags) // 2], 4), "lag_p95_s": round(lags[int(len(lags) * 0.95)], 4),
            "lag_max_s": round(lags[-1], 4),
            "final_render_after_last_token_s": round(rendered_at - source.finished_at, 3),
            "complete": text == "".join(tokens(count))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=400.0, help="tokens per second (default 400)")
    parser.add_argument("--tokens", type=int, default=4000, help="reply length in tokens (default 4000)")
    args = parser.parse_args()
    os.environ["MTPCHAT_HOME"] = tempfile.mkdtemp(prefix="mtpchat-bench-")
    print(json.dumps(asyncio.run(run(args.rate, args.tokens)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
