"""scripts/bench_openai.py's figures from recorded streams, with no server: what one request measures (TTFT,
decode tok/s, acceptance) and how the report pools and compares them.

The streams are real: llama-server's from scripts/check_llama_server.sh (tests/fixtures/llama_server/), and
mtpchatd's (tests/fixtures/mtpchatd/chat_stream_mtp.sse), recorded with curl from `mtpchatd serve --openai`
serving the demo — the bench's request body (greedy, repetition_penalty 1.0, include_usage) with the
prompt of the llama-server recording and max_tokens 48. Both open with a chunk carrying no text (null and
"" content) that must not count as the first token, and mtpchatd's chunks carry several tokens each."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.serve.remote_engine import sse_events
from scripts.bench_openai import LLAMA, MTP, PLAIN, measure, report

FIXTURES = Path(__file__).parent / "fixtures"
REPLY = "The cat sat on the mat and the dog sat on the log."


def timed(path: Path, first_s: float = 0.2, gap_s: float = 0.01) -> list[tuple[float, dict]]:
    """The recorded events, as if event i arrived at first_s + i * gap_s after the request was sent at 0."""
    events = list(sse_events(path.read_bytes().splitlines(keepends=True)))
    return [(first_s + i * gap_s, event) for i, event in enumerate(events)]


def test_a_llama_server_stream_gives_ttft_decode_rate_and_its_draft_figures():
    events = timed(FIXTURES / "llama_server" / "chat_stream_ngram.sse")
    assert len(events) == 17  # a role chunk, 14 content chunks, the finish, usage with timings; [DONE] dropped
    result = measure(0.0, events)
    assert result["text"] == REPLY
    assert result["ttft_ms"] == pytest.approx(210)  # event 1, not the role chunk (event 0) with null content
    assert result["decode_tok_s"] == pytest.approx(14 / 0.13)  # 15 tokens: 14 after the first, events 1..14
    stats = result["stats"]
    assert (stats["generated_tokens"], stats["prompt_tokens"], stats["cached_tokens"]) == (15, 50, 49)
    assert (stats["drafted_tokens"], stats["accepted_tokens"]) == (22, 9)
    assert stats["decode_tok_s"] == pytest.approx(113.724, abs=1e-3)  # llama-server's own predicted_per_second


def test_an_mtpchatd_stream_gives_ttft_decode_rate_and_its_mtp_figures():
    events = timed(FIXTURES / "mtpchatd" / "chat_stream_mtp.sse")
    assert len(events) == 13  # a role chunk with "" content, 10 content chunks, the finish with mtp, usage
    result = measure(0.0, events)
    assert result["text"] == REPLY  # the same greedy reply as llama-server's on the same codes
    assert result["ttft_ms"] == pytest.approx(210)
    assert result["decode_tok_s"] == pytest.approx(14 / 0.09)  # 15 tokens in 10 chunks: tokens, not chunks
    stats = result["stats"]
    assert (stats["generated_tokens"], stats["prompt_tokens"], stats["cached_tokens"]) == (15, 50, 0)
    assert (stats["drafts"], stats["drafted_tokens"], stats["accepted_tokens"]) == (10, 22, 4)
    assert "time_to_first_token_s" not in stats  # the daemon's own TTFT is not the client's


def test_a_stream_without_content_is_an_error():
    events = timed(FIXTURES / "mtpchatd" / "chat_stream_mtp.sse")
    with pytest.raises(ValueError):
        measure(0.0, [events[0], *events[-2:]])


def request(ttft_ms: float, tok_s: float, text: str, **stats) -> dict:
    return {"ttft_ms": ttft_ms, "decode_tok_s": tok_s, "text": text, "stats": {"generated_tokens": 128, **stats}}


def test_the_report_takes_medians_pools_acceptance_and_compares_with_llama_server():
    results = {
        LLAMA: [request(20, 100, "a", drafted_tokens=10, accepted_tokens=1),
                request(40, 200, "b", drafted_tokens=30, accepted_tokens=19),
                request(30, 150, "c", drafted_tokens=0, accepted_tokens=0)],
        MTP: [request(30, 300, "a", drafts=10, drafted_tokens=20, accepted_tokens=10),
              request(60, 240, "B", drafts=30, drafted_tokens=60, accepted_tokens=30),
              request(45, 270, "c", drafts=20, drafted_tokens=40, accepted_tokens=0)],
        PLAIN: [request(15, 120, "a"), request(15, 100, "B"), request(15, 110, "c")],
    }
    out = report(results)
    llama, mtp = out["variants"][LLAMA], out["variants"][MTP]
    assert llama["decode_tok_s"] == {"median": 150, "min": 100, "max": 200, "runs": 3}
    assert mtp["ttft_ms"]["median"] == 45
    # pooled over requests (20 of 40 drafted), not the mean of per-request rates (0.37)
    assert llama["acceptance"] == {"drafted_tokens": 40, "accepted_tokens": 20, "rate": 0.5}
    assert mtp["acceptance"] == {"drafted_tokens": 120, "accepted_tokens": 40, "rate": 0.333,
                                 "mean_acceptance_length": 1.667}  # 1 + 40 accepted / 60 drafting steps
    assert out["variants"][PLAIN]["acceptance"] == {"drafted_tokens": 0, "accepted_tokens": 0, "rate": None}
    assert out["ratios"] == {f"{MTP} / {LLAMA}": {"decode_tok_s": 1.8, "ttft_ms": 1.5},
                             f"{PLAIN} / {LLAMA}": {"decode_tok_s": 0.733, "ttft_ms": 0.5}}
    assert out["same_text"] == {f"{MTP} = {PLAIN}": "3/3", f"{PLAIN} = {LLAMA}": "2/3"}
