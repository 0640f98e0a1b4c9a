"""What one generation is asked to do: the options object that flows from the server down the engine.

Like nano-vllm's `SamplingParams`: one small frozen dataclass that checks itself when built, so a bad
setting fails at once, where it was made, instead of deep inside a decode step. The server converts
a wire request (mtpchat.protocol.GenerateRequest) into it once; `ReplyStream`, `Generation` and
`SpeculativeDecoder` each read the fields they need. What the model decides (its stop token ids, its
context limit) is not here: that belongs to the model, not to the request.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.engine.sampling import SamplingParams
from mtpchat.protocol import MAX_DRAFT


@dataclass(frozen=True)
class GenerationOptions:
    max_tokens: int = 256  # most tokens to generate (0: none)
    sampling: SamplingParams = SamplingParams()
    draft_k: int = 0  # MTP drafts per step, 0 = plain decoding; with `adaptive`, the most a step may draft
    adaptive: bool = False  # pick k per step (daemon.engine.draft_policy.AdaptiveDraft)
    draft_vocab: int | None = None  # draft among the first N token ids only (None: all)
    context: int | None = None  # cap on prompt + reply, below the model's own limit (None: the model's)
    stop: tuple[str, ...] = ()  # stop strings: the reply ends before the first occurrence of any
    prefill_chunk: int = 0  # run the prompt in parts of at most this many tokens, yielding between them (0: whole)

    def __post_init__(self) -> None:
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if not 0 <= self.draft_k <= MAX_DRAFT:
            raise ValueError(f"draft k must be 0..{MAX_DRAFT}, got {self.draft_k}")
        if self.draft_vocab is not None and self.draft_vocab <= 0:
            raise ValueError(f"draft_vocab must be a positive number of token ids, got {self.draft_vocab}")
        if self.context is not None and self.context <= 0:
            raise ValueError(f"context must be a positive number of tokens, got {self.context}")
        if self.prefill_chunk < 0:
            raise ValueError(f"prefill_chunk must be >= 0 tokens, got {self.prefill_chunk}")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a tuple of non-empty strings, got {self.stop!r}")
