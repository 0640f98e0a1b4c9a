"""What a generation measured, named as vLLM names its speculative-decoding metrics.

drafts = verification steps that carried drafts; acceptance rate = accepted / drafted tokens; mean
acceptance length = 1 + accepted / drafts (tokens emitted per verification); accepted_per_position[j]
counts drafts whose (j+1)-th token was accepted, so it never increases with j; drafted_per_position[j]
counts drafts that had a (j+1)-th token (fewer near the token limit). The keys of the maps it
becomes on the wire are mtpchat.protocol's STATS and RUNNING_STATS, each one an attribute here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from mtpchat.protocol import STATS


@dataclass
class DecodeStats:
    draft_k: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose state came from the conversation state cache
    prefill_tokens: int = 0  # prompt tokens run through the model: prompt_tokens - cached_tokens
    generated_tokens: int = 0
    drafts: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    accepted_per_position: list[int] = field(default_factory=list)
    prefill_s: float = 0.0
    decode_s: float = 0.0
    time_to_first_token_s: float = 0.0
    peak_memory_bytes: int = 0  # CUDA: peak allocated during the run; CPU: the process's peak RSS
    state_bytes: int = 0  # caches this generation allocated (MTP adds its KV cache and DeltaNet step slots)
    finish_reason: str = ""

    drafted_per_position: list[int] = field(default_factory=list)

    def record_verification(self, drafted: int, accepted: int) -> None:
        for counts in (self.drafted_per_position, self.accepted_per_position):
            counts.extend([0] * (drafted - len(counts)))
        self.drafts += 1
        self.drafted_tokens += drafted
        self.accepted_tokens += accepted
        for position in range(drafted):
            self.drafted_per_position[position] += 1
            self.accepted_per_position[position] += position < accepted

    @property
    def acceptance_per_position(self) -> list[float]:
        """Of the drafts that reached position j, the share whose token j was accepted."""
        return [a / d for a, d in zip(self.accepted_per_position, self.drafted_per_position)]

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def mean_acceptance_length(self) -> float:
        return 1 + self.accepted_tokens / self.drafts if self.drafts else 0.0

    @property
    def prefill_tok_s(self) -> float:
        return self.prefill_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tok_s(self) -> float:
        """Tokens after the first (which prefill produces) per second of decoding."""
        return (self.generated_tokens - 1) / self.decode_s if self.decode_s and self.generated_tokens > 1 else 0.0

    def as_dict(self, keys: Iterable[str] = STATS) -> dict:
        """The stats map under protocol keys (all of them, or `keys`); lists are copies."""
        values = {key: getattr(self, key) for key in keys}
        return {key: list(value) if isinstance(value, list) else value for key, value in values.items()}
