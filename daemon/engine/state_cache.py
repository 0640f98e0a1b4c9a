"""Engine states at conversation boundaries, so a follow-up turn prefills only its new tokens.

A chat client re-sends the whole conversation every turn. The daemon keeps `Snapshot`s — the trunk's
attention KV for positions [0, n), every DeltaNet layer's conv window and recurrent state after
token n-1 (valid at exactly that position: a DeltaNet state cannot be cut back), the MTP layer's KV
for the pairs inside [0, n) and the hidden that pairs with token n — keyed by the n token ids they
cover. A request is matched by token prefix, never by text or conversation id: the longest snapshot
of the same model whose tokens start the new prompt (and leave at least one token to run) wins, so
edits, regenerations, several clients and interleaved conversations need no bookkeeping, and a
mismatch simply falls back to a shorter snapshot or a full prefill.

Snapshots are taken where the next turn is likely to resume (see `daemon/engine/generate.py`): where the
rendered conversation ends before the assistant header of this turn — chat templates re-render old
turns differently (Qwen drops earlier `<think>` blocks), but the text up to the last user message
comes back token for token — and where the reply ends. A snapshot without MTP state (from a plain
request) serves plain requests only. Memory is bounded per device; the least recently used snapshot
goes first; one that alone exceeds a budget is not kept.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass
class Snapshot:
    tokens: tuple[int, ...]
    trunk: list[tuple[torch.Tensor, ...]]  # ModelCache.capture
    mtp: tuple[torch.Tensor, ...] | None = None  # AttentionCache.capture of the MTP layer, n - 1 pairs
    last_hidden: torch.Tensor | None = None  # [1, 1, H]: the trunk hidden at position n - 1

    def tensors(self) -> list[torch.Tensor]:
        extra = [*(self.mtp or ()), *([self.last_hidden] if self.last_hidden is not None else [])]
        return [t for layer in self.trunk for t in layer] + extra

    def bytes_by_device(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for tensor in self.tensors():
            device = str(tensor.device)
            sizes[device] = sizes.get(device, 0) + tensor.numel() * tensor.element_size()
        return sizes


class StateCache:
    """Snapshots of every resident model, least recently used first, within per-device budgets."""

    def __init__(self, budget: int, budgets: dict[str, int] | None = None):
        self.default_budget, self.budgets = budget, dict(budgets or {})
        self._snapshots: OrderedDict[tuple[str, tuple[int, ...]], Snapshot] = OrderedDict()
        self.hits = self.misses = 0

    def budget(self, device: str) -> int:
        return self.budgets.get(device, self.default_budget)

    def lookup(self, model: str, prompt: list[int], with_mtp: bool) -> Snapshot | None:
        best = None
        for (owner, tokens), snapshot in self._snapshots.items():
            n = len(tokens)
            if (owner == model and n < len(prompt) and (best is None or n > len(best.tokens))
                    and (snapshot.mtp is not None or not with_mtp) and tuple(prompt[:n]) == tokens):
                best = snapshot
        if best is None:
            self.misses += 1
            return None
        self.hits += 1
        self._snapshots.move_to_end((model, best.tokens))
        return best

    def save(self, model: str, snapshot: Snapshot) -> bool:
        """Keep `snapshot` (evicting the least recently used as needed); False if it alone is too big."""
        if any(size > self.budget(device) for device, size in snapshot.bytes_by_device().items()):
            return False
        key = (model, snapshot.tokens)
        held = self._snapshots.get(key)
        if held is None or snapshot.mtp is not None or held.mtp is None:  # never trade MTP state away
            self._snapshots[key] = snapshot
        self._snapshots.move_to_end(key)
        for device in snapshot.bytes_by_device():
            while self.used().get(device, 0) > self.budget(device):
                oldest = next(k for k, s in self._snapshots.items() if device in s.bytes_by_device())
                del self._snapshots[oldest]
        return key in self._snapshots

    def drop_model(self, model: str) -> None:
        for key in [key for key in self._snapshots if key[0] == model]:
            del self._snapshots[key]

    def used(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for snapshot in self._snapshots.values():
            for device, size in snapshot.bytes_by_device().items():
                total[device] = total.get(device, 0) + size
        return total

    def describe(self) -> dict:
        used = self.used()
        devices = sorted(set(used) | set(self.budgets))
        return {"states": len(self._snapshots), "hits": self.hits, "misses": self.misses,
                "budget_per_device": self.default_budget,
                "devices": [{"device": d, "used": used.get(d, 0), "budget": self.budget(d)} for d in devices]}


@dataclass
class PromptReuse:
    """What one generation needs to use the cache: which model's snapshots, and where in its prompt
    the conversation before this turn's assistant header ends (None: no such boundary)."""
    cache: StateCache
    model: str
    boundary: int | None = None

    def lookup(self, prompt: list[int], with_mtp: bool) -> Snapshot | None:
        return self.cache.lookup(self.model, prompt, with_mtp)

    def save(self, snapshot: Snapshot) -> None:
        self.cache.save(self.model, snapshot)
