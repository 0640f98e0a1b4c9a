"""MTP made visible: the live stats bar under the chat and the one-line footer under each reply.

Numbers come straight from the daemon's stats maps (vLLM's names, docs/protocol.md); a key the
daemon does not send is left out rather than shown as zero, and keys this client does not know
(say, cached prompt tokens) are shown as they come, so new daemon stats appear without a change here.
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text
from textual.widgets import Static

from mtpchat.protocol import (
    ACCEPTANCE_APPROXIMATE,
    ACCEPTANCE_PER_POSITION,
    ACCEPTANCE_RATE,
    ACCEPTED_PER_POSITION,
    ACCEPTED_TOKENS,
    DECODE_S,
    DECODE_TOK_S,
    DRAFT_K,
    DRAFTED_PER_POSITION,
    DRAFTED_TOKENS,
    DRAFTS,
    FINISH_REASON,
    GENERATED_TOKENS,
    MEAN_ACCEPTANCE_LENGTH,
    PREFILL_S,
    PROMPT_TOKENS,
)

BARS = " ▁▂▃▄▅▆▇█"
# shown by name below; every other numeric key is listed generically after them
KNOWN = {DECODE_TOK_S, GENERATED_TOKENS, ACCEPTANCE_RATE, MEAN_ACCEPTANCE_LENGTH, DRAFT_K,
         ACCEPTANCE_PER_POSITION, ACCEPTED_PER_POSITION, DRAFTED_PER_POSITION, PROMPT_TOKENS, DRAFTS,
         DRAFTED_TOKENS, ACCEPTED_TOKENS, PREFILL_S, DECODE_S, FINISH_REASON}


def acceptance_bars(per_position: list[float]) -> str:
    """One bar per draft position, height = acceptance rate at that position."""
    return "".join(BARS[round(max(0.0, min(1.0, rate)) * (len(BARS) - 1))] for rate in per_position)


def tok_s(rate: float) -> str:
    """'96 tok/s', and with a decimal below 10 so that a slow reply does not read '1 tok/s' for 1.4."""
    return f"{rate:.1f} tok/s" if rate < 10 else f"{rate:.0f} tok/s"


def _drafted(stats: dict) -> bool:
    """Whether the reply was drafted: a draft length of ours, or a remote engine's acceptance figures
    (another engine reports no draft length)."""
    return bool(stats.get(DRAFT_K)) or (DRAFT_K not in stats and ACCEPTANCE_RATE in stats)


def _numbers(stats: dict, short: bool) -> dict[str, str]:
    """Stats key -> its words, in the order shown."""
    parts = {}
    if (rate := stats.get(DECODE_TOK_S)) is not None:
        parts[DECODE_TOK_S] = tok_s(rate)
    if (tokens := stats.get(GENERATED_TOKENS)) is not None:
        parts[GENERATED_TOKENS] = f"{tokens} {'tok' if short else 'tokens'}"
    if _drafted(stats):
        about = "≈" if stats.get(ACCEPTANCE_APPROXIMATE) else ""  # a remote engine's estimate
        if (accepted := stats.get(ACCEPTANCE_RATE)) is not None:
            parts[ACCEPTANCE_RATE] = (f"accepted {about}{accepted:.0%}" if short
                                      else f"{about}{accepted:.0%} draft accepted")
        if (length := stats.get(MEAN_ACCEPTANCE_LENGTH)) is not None:
            parts[MEAN_ACCEPTANCE_LENGTH] = f"len {about}{length:.2f}" if short else f"{about}{length:.2f} tokens/step"
    elif DRAFT_K in stats:
        parts[DRAFT_K] = "plain decoding"
    return parts


def footer_line(stats: dict) -> str:
    """'96 tok/s · 214 tokens · 82% draft accepted' — the final numbers of one reply."""
    return " · ".join(_numbers(stats, short=False).values())


def _extra(stats: dict) -> dict[str, str]:
    """Numeric stats without a place of their own, named from their keys (`_tok_s` and `_s` read as units)."""
    parts = {}
    for key, value in stats.items():
        if key in KNOWN or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if key.endswith("_tok_s"):
            parts[key] = f"{key.removesuffix('_tok_s').replace('_', ' ')} {tok_s(value)}"
        elif key.endswith("_s"):
            parts[key] = f"{key.removesuffix('_s').replace('_', ' ')} {value:.3g} s"
        else:
            parts[key] = (f"{key.replace('_', ' ')} {value:.3g}" if isinstance(value, float)
                          else f"{key.replace('_', ' ')} {value}")
    return parts


SEPARATOR = " │ "
SETTINGS = "settings"  # the item of the conversation's own settings ("T0.7 p0.8"), next to the model
KEPT_LONGEST = (DECODE_TOK_S, ACCEPTANCE_RATE, DRAFT_K, SETTINGS, GENERATED_TOKENS, MEAN_ACCEPTANCE_LENGTH,
                ACCEPTANCE_PER_POSITION)  # in a narrow bar, every other item goes first (the last listed first)


def stats_text(stats: dict, model: str | None, streaming: bool, width: int | None = None, settings: str = "") -> Text:
    """The bar, compact: '● live dense k=3 │ T0.7 k20 │ 96 tok/s │ 214 tok │ accepted 82% │ len 2.46 │ ▇▅▃'
    (`settings`: those the conversation sets, in short).
    Within `width` cells, the items that do not fit are left out, least important first (KEPT_LONGEST),
    so that an item is shown whole or not at all."""
    text = Text()
    text.append("● live " if streaming else "last reply ", style="bold" if streaming else "dim")
    text.append(model or "default model", style="bold")
    if DRAFT_K in stats:
        text.append(f" k={stats[DRAFT_K]}")
    parts = {SETTINGS: settings} if settings else {}
    parts.update(_numbers(stats, short=True))
    if _drafted(stats) and stats.get(ACCEPTANCE_PER_POSITION):
        parts[ACCEPTANCE_PER_POSITION] = f"per position {acceptance_bars(stats[ACCEPTANCE_PER_POSITION])}"
    parts.update(_extra(stats))
    by_importance = sorted(parts, key=lambda k: KEPT_LONGEST.index(k) if k in KEPT_LONGEST else len(KEPT_LONGEST))
    def too_wide() -> bool:
        return text.cell_len + sum(len(SEPARATOR) + cell_len(part) for part in parts.values()) > width

    while width is not None and parts and too_wide():
        del parts[by_importance.pop()]
    for part in parts.values():
        text.append(SEPARATOR, style="dim")
        text.append(part)
    return text


class StatsBar(Static):
    """One line: model, draft k, tok/s, acceptance, per-position bars — live while a reply streams; what
    does not fit the bar's width is left out (and put back when it widens)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._shown: tuple[dict, str | None, bool] | None = None  # the stats, model and streaming shown
        self._idle_model: str | None = None  # the model named while no stats are shown
        self.settings = ""  # the conversation's own settings, in short (settings_dialog.summary)

    def show(self, stats: dict, model: str | None, streaming: bool) -> None:
        self._shown = (stats, model, streaming)
        self._fit()

    def show_idle(self, model: str | None) -> None:
        self._shown, self._idle_model = None, model
        self._fit()

    def show_settings(self, settings: str) -> None:
        self.settings = settings
        self._fit()

    def on_resize(self) -> None:
        self._fit()

    def _fit(self) -> None:
        if self._shown is not None:
            self.update(stats_text(*self._shown, width=self.content_size.width or None, settings=self.settings))
        else:
            self.update(Text.assemble(("model ", "dim"), (self._idle_model or "default model", "bold"),
                                      (f" {self.settings}" if self.settings else ""),
                                      ("  — stats appear here while a reply streams", "dim")))
