"""MTP made visible: the live stats bar under the chat and the one-line footer under each reply.

Numbers come straight from the daemon's stats maps (vLLM's names, docs/protocol.md); a key the
daemon does not send is left out rather than shown as zero, and keys this client does not know
(say, cached prompt tokens) are shown as they come, so new daemon stats appear without a change here.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

BARS = " ▁▂▃▄▅▆▇█"
# shown by name below; every other numeric key is listed generically after them
KNOWN = {"decode_tok_s", "generated_tokens", "acceptance_rate", "mean_acceptance_length", "draft_k",
         "acceptance_per_position", "accepted_per_position", "drafted_per_position", "prompt_tokens", "drafts",
         "drafted_tokens", "accepted_tokens", "prefill_s", "decode_s", "finish_reason"}


def acceptance_bars(per_position: list[float]) -> str:
    """One bar per draft position, height = acceptance rate at that position."""
    return "".join(BARS[round(max(0.0, min(1.0, rate)) * (len(BARS) - 1))] for rate in per_position)


def _numbers(stats: dict, short: bool) -> list[str]:
    parts = []
    if (rate := stats.get("decode_tok_s")) is not None:
        parts.append(f"{rate:.0f} tok/s")
    if (tokens := stats.get("generated_tokens")) is not None:
        parts.append(f"{tokens} {'tok' if short else 'tokens'}")
    if stats.get("draft_k"):
        if (accepted := stats.get("acceptance_rate")) is not None:
            parts.append(f"accepted {accepted:.0%}" if short else f"{accepted:.0%} draft accepted")
        if (length := stats.get("mean_acceptance_length")) is not None:
            parts.append(f"len {length:.2f}" if short else f"{length:.2f} tokens/step")
    elif "draft_k" in stats:
        parts.append("plain decoding")
    return parts


def footer_line(stats: dict) -> str:
    """'96 tok/s · 214 tokens · 82% draft accepted' — the final numbers of one reply."""
    return " · ".join(_numbers(stats, short=False))


def _extra(stats: dict) -> list[str]:
    """Numeric stats without a place of their own, named from their keys (`_tok_s` and `_s` read as units)."""
    parts = []
    for key, value in stats.items():
        if key in KNOWN or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if key.endswith("_tok_s"):
            parts.append(f"{key.removesuffix('_tok_s').replace('_', ' ')} {value:.0f} tok/s")
        elif key.endswith("_s"):
            parts.append(f"{key.removesuffix('_s').replace('_', ' ')} {value:.3g} s")
        else:
            parts.append(f"{key.replace('_', ' ')} {value:.3g}" if isinstance(value, float)
                         else f"{key.replace('_', ' ')} {value}")
    return parts


def stats_text(stats: dict, model: str | None, streaming: bool) -> Text:
    """The bar, compact: '● live dense k=3 │ 96 tok/s │ 214 tok │ accepted 82% │ len 2.46 │ ▇▅▃'."""
    text = Text()
    text.append("● live " if streaming else "last reply ", style="bold" if streaming else "dim")
    text.append(model or "default model", style="bold")
    if "draft_k" in stats:
        text.append(f" k={stats['draft_k']}")
    parts = _numbers(stats, short=True)
    if stats.get("draft_k") and stats.get("acceptance_per_position"):
        parts.append(f"per position {acceptance_bars(stats['acceptance_per_position'])}")
    for part in parts + _extra(stats):
        text.append(" │ ", style="dim")
        text.append(part)
    return text


class StatsBar(Static):
    """One line: model, draft k, tok/s, acceptance, per-position bars — live while a reply streams."""

    def show(self, stats: dict, model: str | None, streaming: bool) -> None:
        self.update(stats_text(stats, model, streaming))

    def show_idle(self, model: str | None) -> None:
        self.update(Text.assemble(("model ", "dim"), (model or "default model", "bold"),
                                  ("  — stats appear here while a reply streams", "dim")))
