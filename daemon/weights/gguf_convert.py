"""Converting a Llama-architecture GGUF file (llama.cpp's format) into a checkpoint directory we load.

The demo model ships only as a quantised GGUF. We convert it once, with the `gguf` package's reader
and dequantiser, into what every other checkpoint is: config.json, model.safetensors (float32, the
dequantised values exactly, so nothing is lost twice), tokenizer files with the chat template
(transformers builds the tokenizer from the GGUF's vocabulary) and generation_config.json. llama.cpp
stores q_proj/k_proj rows permuted (each head's rotary halves interleaved, for its RoPE kernel); we
undo that. The result loads through the ordinary loader, and transformers loads it too.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

# GGUF tensor name pieces -> transformers' Llama names (per layer under blk.N.)
LAYER_TENSORS = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
TOP_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


class ConversionError(Exception):
    """A GGUF file we cannot convert; the message says why."""


def unpermute_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row order: per head, rows [r0, r0', r1, r1', ...] back to [r0, r1, ..., r0', r1', ...]."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise ConversionError(f"the GGUF file lacks the metadata field {key!r}")
        return default
    return field.contents()


def _config(reader, tied: bool) -> dict:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ConversionError(f"only Llama-architecture GGUF files convert; this one is {arch!r}")
    hidden = int(_field(reader, "llama.embedding_length"))
    heads = int(_field(reader, "llama.attention.head_count"))
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    eos = int(_field(reader, "tokenizer.ggml.eos_token_id"))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(_field(reader, "llama.vocab_size", vocab)),
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, "llama.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, "llama.attention.head_count_kv", heads)),
        "head_dim": int(_field(reader, "llama.rope.dimension_count", hidden // heads)),
        "rms_norm_eps": float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(_field(reader, "llama.rope.freq_base", 10_000.0))},
        "max_position_embeddings": int(_field(reader, "llama.context_length")),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tied,
        "bos_token_id": int(_field(reader, "tokenizer.ggml.bos_token_id", eos)),
        "eos_token_id": eos,
        "dtype": "float32",
    }


def _hf_name(gguf_name: str) -> str:
    base, _, suffix = gguf_name.rpartition(".")
    parts = base.split(".")
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in LAYER_TENSORS:
        return f"model.layers.{parts[1]}.{LAYER_TENSORS[parts[2]]}.{suffix}"
    if base in TOP_TENSORS:
        return f"{TOP_TENSORS[base]}.{suffix}"
    raise ConversionError(f"unexpected tensor {gguf_name!r} in a Llama GGUF file")


def _tensors(reader, config: dict, progress: Callable[[float], None]) -> dict[str, torch.Tensor]:
    from gguf.quants import dequantize

    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    tensors = {}
    for done, tensor in enumerate(reader.tensors, start=1):
        try:
            values = torch.from_numpy(np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32))
        except NotImplementedError as exc:
            raise ConversionError(f"tensor {tensor.name!r} uses {tensor.tensor_type.name}, which gguf cannot "
                                  f"dequantise: {exc}") from None
        kind = tensor.name.split(".")[-2]
        if kind in heads:
            values = unpermute_rows(values, heads[kind])
        tensors[_hf_name(tensor.name)] = values
        progress(done / len(reader.tensors))
    return tensors


def convert_gguf(gguf_path: Path, out_dir: Path, progress: Callable[[float], None] = lambda fraction: None) -> Path:
    """Write the checkpoint directory `out_dir` (atomically: built beside it, then renamed)."""
    import gguf
    from transformers import AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    try:
        reader = gguf.GGUFReader(gguf_path)
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read {gguf_path} as a GGUF file: {exc}") from None
    tied = not any(t.name == "output.weight" for t in reader.tensors)
    config = _config(reader, tied)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(_tensors(reader, config, progress), partial / "model.safetensors", metadata={"format": "pt"})
    (partial / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"], "do_sample": False}
    (partial / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(partial)
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return out_dir
