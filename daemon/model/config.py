"""Model configuration read from a checkpoint's config.json.

Hub checkpoints of Qwen3.5/3.6 are vision-language models whose text fields live under
`text_config`; bare text checkpoints put them at the top level. Both are read into one small,
self-validating dataclass so the model code never looks at raw JSON.

Plain transformer trunks (`llama`, `qwen3`) are the same model with three switches off: every layer
is full attention, attention is ungated with RoPE over the whole head, and RMSNorm scales by a plain
`w` rather than `1 + w`. Qwen3 keeps the per-head q/k norms. The switches are properties derived from
the model type, so a config can never mix them inconsistently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

SUPPORTED_MODEL_TYPES = {
    "qwen3_5": "dense",
    "qwen3_5_text": "dense",
    "qwen3_5_moe": "moe",
    "qwen3_5_moe_text": "moe",
    "qwen3": "dense",
    "llama": "dense",
}
HYBRID_MODEL_TYPES = {"qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text"}


@dataclass(frozen=True)
class TextConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    layer_types: tuple[str, ...]
    intermediate_size: int = 0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10_000_000.0
    partial_rotary_factor: float = 0.25
    linear_conv_kernel_dim: int = 4
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
    linear_num_key_heads: int = 16
    linear_num_value_heads: int = 32
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    mtp_num_hidden_layers: int = 0
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 262_144
    llama3_rope: tuple[float, float, float, float] | None = None  # see daemon.model.rope.inverse_frequencies
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            supported = ", ".join(sorted(SUPPORTED_MODEL_TYPES))
            raise ValueError(f"unsupported model_type {self.model_type!r}; supported: {supported}")
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers"
            )
        unknown = set(self.layer_types) - {"full_attention", "linear_attention"}
        if unknown:
            raise ValueError(f"unknown layer types {sorted(unknown)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.linear_num_value_heads % self.linear_num_key_heads:
            raise ValueError("linear_num_value_heads must be a multiple of linear_num_key_heads")
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim:
            raise ValueError(f"partial_rotary_factor {self.partial_rotary_factor} gives no valid rotary dim")
        if self.is_moe and not (0 < self.num_experts_per_tok <= self.num_experts):
            raise ValueError("a MoE model needs 0 < num_experts_per_tok <= num_experts")
        if not self.is_moe and self.intermediate_size <= 0:
            raise ValueError("a dense model needs intermediate_size > 0")
        if self.mtp_num_hidden_layers > 1:  # the MTP head is exactly one decoder layer (mtp.layers.0)
            raise ValueError(f"mtp_num_hidden_layers = {self.mtp_num_hidden_layers} is not supported: the MTP "
                             "head must have at most one layer (mtp.layers.0), as Qwen3.5/3.6 checkpoints do")

    @property
    def is_moe(self) -> bool:
        return SUPPORTED_MODEL_TYPES[self.model_type] == "moe"

    @property
    def is_hybrid(self) -> bool:
        """Qwen3.5/3.6: DeltaNet layers, gated attention, zero-centred norms."""
        return self.model_type in HYBRID_MODEL_TYPES

    @property
    def norm_offset(self) -> float:
        """RMSNorm scales by `norm_offset + w`: 1 for zero-centred norms, 0 for plain ones."""
        return 1.0 if self.is_hybrid else 0.0

    @property
    def gated_attention(self) -> bool:
        return self.is_hybrid

    @property
    def qk_norm(self) -> bool:
        return self.is_hybrid or self.model_type == "qwen3"

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @classmethod
    def from_dict(cls, raw: dict) -> TextConfig:
        """Accept the top-level VLM config (fields under `text_config`) or a bare text config."""
        text = dict(raw.get("text_config") or raw)
        model_type = text.get("model_type") or raw.get("model_type", "")
        hybrid = model_type in HYBRID_MODEL_TYPES
        rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if not hybrid and rope_type not in ("default", "llama3"):
            raise ValueError(f"rope_type {rope_type!r} is not supported; only unscaled RoPE and Llama 3's are")
        llama3_rope = None
        if rope_type == "llama3":
            llama3_rope = (float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"]),
                           float(rope["original_max_position_embeddings"]))
        for bias in ("attention_bias", "mlp_bias"):
            if text.get(bias):
                raise ValueError(f"{bias} = true is not supported")
        n_layers = text["num_hidden_layers"]
        interval = text.get("full_attention_interval", 4) if hybrid else 1
        layer_types = text.get("layer_types") or [
            "full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(n_layers)
        ]
        eos = text.get("eos_token_id", raw.get("eos_token_id"))
        eos_ids = tuple(eos if isinstance(eos, list) else [] if eos is None else [eos])
        heads = text["num_attention_heads"]
        optional = {
            name: text[name]
            for name in (
                "intermediate_size", "rms_norm_eps", "linear_conv_kernel_dim", "linear_key_head_dim",
                "linear_value_head_dim", "linear_num_key_heads", "linear_num_value_heads", "num_experts",
                "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size",
                "mtp_num_hidden_layers", "max_position_embeddings",
            )
            if text.get(name) is not None
        }
        return cls(
            model_type=model_type,
            vocab_size=text["vocab_size"],
            hidden_size=text["hidden_size"],
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=text.get("num_key_value_heads", heads),
            head_dim=text.get("head_dim") or text["hidden_size"] // heads,
            layer_types=tuple(layer_types),
            rope_theta=float(rope.get("rope_theta", text.get("rope_theta", 10_000_000.0 if hybrid else 10_000.0))),
            partial_rotary_factor=float(
                rope.get("partial_rotary_factor", text.get("partial_rotary_factor", 0.25 if hybrid else 1.0))
            ),
            tie_word_embeddings=bool(text.get("tie_word_embeddings", raw.get("tie_word_embeddings", False))),
            eos_token_ids=eos_ids,
            llama3_rope=llama3_rope,
            **optional,
        )

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: Path) -> TextConfig:
        path = Path(checkpoint_dir) / "config.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} is missing: is {checkpoint_dir} a model checkpoint?") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
        try:
            return cls.from_dict(raw)
        except KeyError as exc:
            raise ValueError(f"{path} lacks the field {exc.args[0]!r}") from None
