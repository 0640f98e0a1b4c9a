"""Converting a Llama-architecture GGUF file (llama.cpp's format) into a checkpoint directory we load.

The demo model ships only as a quantised GGUF. We convert it once, with the `gguf` package's reader
and dequantiser, into what every other checkpoint is: config.json, model.safetensors (float32, the
dequantised values exactly, so nothing is lost twice), tokenizer files with the chat template
(transformers builds the tokenizer from the GGUF's vocabulary) and generation_config.json. llama.cpp
stores q_proj/k_proj rows permuted (each head's rotary halves interleaved, for its RoPE kernel); we
undo that. The result loads through the ordinary loader, and transformers loads it too.

Q4_1 and Q8_0 tensors are also kept as shipped, in gguf_codes.safetensors beside the model, so the
loader maps them onto our kernels without quantizing twice. Q4_1 (blocks of 32 weights: float16 scale
d and min m, w = d·q + m, q in 0..15; `<name>.q4_1_codes` uint8 [rows, cols/2] in ggml's nibble order,
`.q4_1_d` and `.q4_1_m` float16 [rows, cols/32]) is int4 at group 32 (daemon.model.quantized.
q4_1_to_int4). Q8_0 (blocks of 32: float16 scale d, w = d·q, q int8; `<name>.q8_0_codes` int8
[rows, cols], `.q8_0_d` float16 [rows, cols/32]), the demo's embedding and so its tied lm_head, is two
int4 group-32 halves (daemon.model.quantized.Q8Linear). Other GGUF types are kept only dequantised.
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
CODES_FILE = "gguf_codes.safetensors"  # Q4_1 and Q8_0 tensors as shipped
Q4_1_GROUP = 32  # weights per Q4_1 block
Q4_1_BLOCK_BYTES = 20  # float16 d, float16 m, 16 bytes of codes
Q8_0_GROUP, Q8_0_BLOCK_BYTES = 32, 34  # weights per Q8_0 block; float16 d, 32 int8 codes


def q4_1_names(weight_name: str) -> tuple[str, str, str]:
    """Where the Q4_1 codes, scales and mins of the checkpoint tensor `weight_name` are stored."""
    base = weight_name.removesuffix(".weight")
    return f"{base}.q4_1_codes", f"{base}.q4_1_d", f"{base}.q4_1_m"


def q8_0_names(weight_name: str) -> tuple[str, str]:
    """Where the Q8_0 codes and scales of the checkpoint tensor `weight_name` are stored."""
    base = weight_name.removesuffix(".weight")
    return f"{base}.q8_0_codes", f"{base}.q8_0_d"


def split_q8_0(blocks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """A Q8_0 tensor's bytes [rows, cols/32·34] -> (codes int8 [rows, cols], d float16 [rows, cols/32])."""
    rows = blocks.shape[0]
    blocks = torch.from_numpy(np.array(blocks)).reshape(rows, -1, Q8_0_BLOCK_BYTES)
    d = blocks[..., :2].contiguous().view(torch.float16)[..., 0]
    return blocks[..., 2:].contiguous().view(torch.int8).reshape(rows, -1), d


def read_q8_0(files, weight_name: str, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 [rows, cols], d float16 [rows, cols/32]) of a checkpoint tensor kept as Q8_0."""
    rows, cols = shape
    codes, d = q8_0_names(weight_name)
    return files.read(codes, (rows, cols)), files.read(d, (rows, cols // Q8_0_GROUP))


def split_q4_1(blocks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A Q4_1 tensor's bytes [rows, cols/32·20] -> (codes bytes [rows, cols/2], d, m [rows, cols/32])."""
    rows = blocks.shape[0]
    blocks = torch.from_numpy(np.array(blocks)).reshape(rows, -1, Q4_1_BLOCK_BYTES)
    d, m = (blocks[..., i:i + 2].contiguous().view(torch.float16)[..., 0] for i in (0, 2))
    return blocks[..., 4:].reshape(rows, -1).contiguous(), d, m


def unpack_q4_1_codes(codes: torch.Tensor) -> torch.Tensor:
    """ggml's nibble order -> codes 0..15 [rows, cols]: in each block's 16 bytes, the low nibbles are
    weights 0..15 and the high nibbles weights 16..31."""
    rows = codes.shape[0]
    blocks = codes.reshape(rows, -1, Q4_1_GROUP // 2)
    return torch.cat((blocks & 0x0F, blocks >> 4), dim=-1).reshape(rows, -1)


def read_q4_1(files, weight_name: str, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes 0..15 [rows, cols], d, m [rows, cols/32]) of a checkpoint tensor kept as Q4_1."""
    rows, cols = shape
    codes, d, m = q4_1_names(weight_name)
    return (unpack_q4_1_codes(files.read(codes, (rows, cols // 2))), files.read(d, (rows, cols // Q4_1_GROUP)),
            files.read(m, (rows, cols // Q4_1_GROUP)))


# GGML types kept as shipped beside their float32 values: type name -> (split the bytes, checkpoint names)
SHIPPED = {"Q4_1": (split_q4_1, q4_1_names), "Q8_0": (split_q8_0, q8_0_names)}


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
        "rope_parameters": {"rope_type": "default",
                            "rope_theta": float(_field(reader, "llama.rope.freq_base", 10_000.0))},
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


def _tensors(reader, config: dict, progress: Callable[[float], None]) -> tuple[dict, dict]:
    """(float32 tensors by name, the Q4_1 and Q8_0 tensors' codes and scales by name), q/k rows
    unpermuted in both."""
    from gguf.quants import dequantize

    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    tensors, codes = {}, {}
    for done, tensor in enumerate(reader.tensors, start=1):
        try:
            values = torch.from_numpy(np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32))
        except NotImplementedError as exc:
            raise ConversionError(f"tensor {tensor.name!r} uses {tensor.tensor_type.name}, which gguf cannot "
                                  f"dequantise: {exc}") from None
        kind = tensor.name.split(".")[-2]
        name = _hf_name(tensor.name)
        split, names = SHIPPED.get(tensor.tensor_type.name, (None, None))
        parts = split(tensor.data) if split else ()
        if kind in heads:
            values = unpermute_rows(values, heads[kind])
            parts = tuple(unpermute_rows(part, heads[kind]) for part in parts)
        tensors[name] = values
        if parts:
            codes.update(zip(names(name), parts))
        progress(done / len(reader.tensors))
    return tensors, codes


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
    tensors, codes = _tensors(reader, config, progress)
    save_file(tensors, partial / "model.safetensors", metadata={"format": "pt"})
    save_file(codes, partial / CODES_FILE, metadata={"format": "pt"})  # (empty for a float GGUF)
    (partial / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"], "do_sample": False}
    (partial / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(partial)
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return out_dir
