"""The text model we run (Qwen3.5/3.6, and plain Llama / Qwen3 trunks): trunk, lm_head and (when the
checkpoint has one) the MTP head.

One forward takes any number of new tokens at consecutive positions — a prefill, a 1-token decode,
a (k+1)-token verify — writes them into a preallocated `ModelCache`, and returns logits plus the
final post-norm hidden states the MTP head drafts from. Module and parameter names mirror the
checkpoint's tensor names, so loading is a rename of prefixes, nothing more. The model knows nothing
about tokenization, sampling or speculative decoding.
"""

from __future__ import annotations

import torch
from torch import nn

from daemon.model.attention import Attention
from daemon.model.cache import AttentionCache, ModelCache
from daemon.model.config import TextConfig
from daemon.model.deltanet import GatedDeltaNet
from daemon.model.linear import Linear, own_product
from daemon.model.mlp import DenseMLP, feed_forward
from daemon.model.norms import rms_norm
from daemon.model.precision import accumulation_dtype
from daemon.model.rope import model_inverse_frequencies
from daemon.model.step_context import StepContext
from daemon.model.w4a8 import W4A8Linear


def _kernel_weight(layer: nn.Module) -> tuple[torch.Tensor, ...] | None:
    """A product's weight as decode_layer.cpp takes it: (w, None, None) where the float32 kernel multiplies
    by it, (codes, d, m) for an int4 layer on the w4a8 kernel; None for any other layer."""
    if type(layer) is Linear and own_product(layer.weight):
        return layer.weight, None, None
    if type(layer) is W4A8Linear and not layer.experts:
        return layer.codes, layer.d, layer.m
    return None


class DecoderLayer(nn.Module):
    def __init__(self, config: TextConfig, layer_type: str):
        super().__init__()
        self.is_attention = layer_type == "full_attention"
        if self.is_attention:
            self.self_attn = Attention(config)
        else:
            self.linear_attn = GatedDeltaNet(config)
        self.mlp = feed_forward(config)
        self.input_layernorm = rms_norm(config)
        self.post_attention_layernorm = rms_norm(config)
        self._one_call: tuple | None = None  # the decode_layer call's weights, read once (`takes_one_call`)

    def forward(self, x: torch.Tensor, cache, ctx: StepContext) -> torch.Tensor:
        if self.is_attention and self.self_attn.kernel_rows(x, cache, ctx) and self.takes_one_call():
            *weights, heads, gated, offset, eps = self._one_call
            cache.reserve(ctx.kv_len)
            return torch.ops.mtpchat_cpu.decode_layer(x, *weights, ctx.cos, ctx.sin, cache.keys, cache.values,
                                                      ctx.kv_len - x.shape[1], heads, gated, offset, eps)
        mixer = self.self_attn if self.is_attention else self.linear_attn
        x = x + mixer(self.input_layernorm(x), cache, ctx)
        return x + self.mlp(self.post_attention_layernorm(x))

    def takes_one_call(self) -> bool:
        """Whether this attention layer's step runs as one call of this project's kernels where the attention
        kernel serves its rows (decode_layer.cpp: the modules' ops without the Python between them): with a
        dense MLP, and each of the four products on the float32 kernel or the int4 one. Those Python-level
        calls cost more than the ops themselves on a decode row, and more again because the weight stream has
        evicted the interpreter's data from the caches by the time they run: the demo's fp32 decode step went
        23.6-24.0 -> 21.2-21.8 ms at 2 threads and 42.5-42.7 -> 40.6-41.0 at 1, its int4 step 8.2-8.4 -> 5.2-5.4
        ms at 2 threads and 10.2-12.0 -> 8.1-10.4 at 1 (A/B against the modules' calls, median of 64 steps,
        Sapphire Rapids). About 1.4 ms of fp32's at 2 threads came from finding the weights for the call once,
        on the layer's first decode step, rather than through the modules every step: moving the layer (`to`,
        `to_empty`: new tensors) makes it find them again; swapping a submodule after a step does not."""
        if self._one_call is None:
            attention, mlp = self.self_attn, self.mlp
            norm, q_norm, k_norm = self.input_layernorm, attention.q_norm, attention.k_norm
            products = [_kernel_weight(attention.qkv_proj), _kernel_weight(attention.o_proj)]
            if type(mlp) is DenseMLP:
                products += [_kernel_weight(mlp.gate_up_proj), _kernel_weight(mlp.down_proj)]
            fits = len(products) == 4 and None not in products
            self._one_call = (norm.weight, *products[0], q_norm and q_norm.weight, k_norm and k_norm.weight,
                              *products[1], self.post_attention_layernorm.weight, *products[2], *products[3],
                              attention.num_heads, attention.gated, norm.offset, norm.eps) if fits else ()
        return bool(self._one_call)

    def _apply(self, fn, recurse=True):
        self._one_call = None
        return super()._apply(fn, recurse)


class MTPHead(nn.Module):
    """Multi-token prediction: from hidden h_i and token t_{i+1}, predict token t_{i+2}.

    x = fc([pre_fc_norm_embedding(embed(t_{i+1})) | pre_fc_norm_hidden(h_i)]), one full-attention
    decoder layer at position i with its own KV cache, then `norm`. Embedding and lm_head are the
    trunk's. The output (after `norm`) is also the hidden for the next chained draft.
    """

    def __init__(self, config: TextConfig):
        super().__init__()
        hidden = config.hidden_size
        self.fc = Linear(2 * hidden, hidden)
        self.pre_fc_norm_embedding = rms_norm(config)
        self.pre_fc_norm_hidden = rms_norm(config)
        self.layers = nn.ModuleList([DecoderLayer(config, "full_attention")])
        self.norm = rms_norm(config)

    def forward(self, embeds: torch.Tensor, hidden: torch.Tensor, cache: AttentionCache,
                ctx: StepContext) -> torch.Tensor:
        x = self.fc(torch.cat((self.pre_fc_norm_embedding(embeds), self.pre_fc_norm_hidden(hidden)), dim=-1))
        return self.norm(self.layers[0](x, cache, ctx))


class QwenModel(nn.Module):
    def __init__(self, config: TextConfig, with_mtp: bool):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, t) for t in config.layer_types)
        self.norm = rms_norm(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size)
        self.mtp = MTPHead(config) if with_mtp else None
        # Not buffers: rotary frequencies are computed at the accumulation dtype of the weights as they
        # are when used (float32 even for bf16 weights), on the CPU (even for a meta model), then moved.
        self._inv_freq_on: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self.segments: list[tuple[torch.device, range]] = []  # set by `place`; empty = all on `device`

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def output_device(self) -> torch.device:
        """Where logits, the final hidden states and the MTP head live (the last device of a split)."""
        return self.norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def rotary_frequencies(self, device: torch.device | str) -> torch.Tensor:
        """RoPE's inverse frequencies at `accumulation_dtype(self.dtype)` on `device`."""
        key = (torch.device(device), accumulation_dtype(self.dtype))
        if key not in self._inv_freq_on:
            self._inv_freq_on[key] = model_inverse_frequencies(self.config, "cpu", key[1]).to(key[0])
        return self._inv_freq_on[key]

    def place(self, embed_device, layer_devices, head_device, *, allocate: bool = False) -> None:
        """Put the embedding, each layer and the head (norm, lm_head, MTP) on their devices; with
        `allocate`, give a meta-device model uninitialised storage there instead of moving it."""
        def put(module: nn.Module, device) -> None:
            module.to_empty(device=device) if allocate else module.to(device)

        put(self.embed_tokens, embed_device)
        for layer, device in zip(self.layers, layer_devices, strict=True):
            put(layer, device)
        for module in (self.norm, self.lm_head, self.mtp):
            if module is not None:
                put(module, head_device)
        devices = [torch.device(d) for d in layer_devices]
        starts = [i for i in range(len(devices)) if i == 0 or devices[i] != devices[i - 1]]
        self.segments = [(devices[a], range(a, b)) for a, b in zip(starts, [*starts[1:], len(devices)])]
        self._inv_freq_on.clear()

    def layer_devices(self) -> list[torch.device]:
        return [device for device, layers in self.segments for _ in layers] or [self.device] * len(self.layers)

    def new_cache(self, max_len: int, *, batch: int = 1, max_steps: int = 0,
                  initial_len: int | None = None) -> ModelCache:
        """Caches for `max_len` positions; with `initial_len`, attention buffers start that long and grow."""
        return ModelCache(self.config, max_len, batch=batch, max_steps=max_steps, device=self.layer_devices(),
                          dtype=self.dtype, initial_len=initial_len)

    def new_mtp_cache(self, max_len: int, *, batch: int = 1, initial_len: int | None = None) -> AttentionCache:
        c = self.config
        return AttentionCache.allocate(batch, c.num_key_value_heads, max_len, c.head_dim, self.output_device,
                                       self.dtype, initial_len)

    def _context(self, positions: torch.Tensor, kv_len: int, keep_steps: bool, device: torch.device,
                 key_mask: torch.Tensor | None = None, decode_rows: bool = False) -> StepContext:
        if key_mask is not None:
            key_mask = key_mask.to(device)
        return StepContext.build(positions.to(device), kv_len, self.rotary_frequencies(device), self.dtype,
                                 keep_steps, key_mask, decode_rows)

    def _trunk(self, input_ids: torch.Tensor, cache: ModelCache, positions: torch.Tensor, kv_len: int,
               keep_steps: bool, key_mask: torch.Tensor | None, decode_rows: bool = False) -> torch.Tensor:
        """The trunk over new tokens at `positions` -> hidden [B, T, H] after the final norm (`decode_rows`:
        see StepContext)."""
        x = self.embed_tokens(input_ids.to(self.device))
        for device, indices in self.segments or [(self.device, range(len(self.layers)))]:
            x = x.to(device)  # a split model hands activations from card to card here
            ctx = self._context(positions, kv_len, keep_steps, device, key_mask, decode_rows)
            for i in indices:
                x = self.layers[i](x, cache.layers[i], ctx)
        return self.norm(x.to(self.output_device))

    def forward(self, input_ids: torch.Tensor, cache: ModelCache, start: int, *, keep_steps: bool = False,
                last_only: bool = False, key_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run new tokens [B, T] at positions start..start+T-1.

        Returns (logits, hidden): logits [B, T or 1, V] (only the last position when `last_only`),
        hidden [B, T, H] after the final norm. With `keep_steps`, each DeltaNet layer also records its
        state after every new token (see `ModelCache.restore_step`). `key_mask` [B, cache length] hides
        cache slots per row (see `StepContext.build`): batched decoding of left-padded prompts.
        """
        length = input_ids.shape[1]
        positions = torch.arange(start, start + length, device=self.device)
        hidden = self._trunk(input_ids, cache, positions, start + length, keep_steps, key_mask, decode_rows=True)
        return self.lm_head(hidden[:, -1:] if last_only else hidden), hidden

    def forward_at(self, input_ids: torch.Tensor, cache: ModelCache, positions: torch.Tensor, *,
                   keep_steps: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed-shape form of `forward` for captured steps: `positions` [T] is a device tensor and
        attention reads the caches' whole capacity, masked by position, so nothing depends on a Python
        int that changes from step to step. The caches must be allocated at full capacity."""
        if not cache.is_full():
            raise ValueError("a fixed-shape step needs caches allocated at full capacity (no initial_len)")
        hidden = self._trunk(input_ids, cache, positions, cache.capacity, keep_steps, None)
        return self.lm_head(hidden), hidden

    def mtp_forward(self, next_ids: torch.Tensor, hidden: torch.Tensor, cache: AttentionCache, start: int, *,
                    vocab: int | None = None, last_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """MTP head over pairs (hidden[:, j] at position start+j, next_ids[:, j]) -> (logits, MTP hidden).

        With `vocab`, logits cover token ids [0, vocab) only: a reduced draft vocabulary; with
        `last_only`, only the last pair's (a long prompt's pairs would need prompt × vocab floats)."""
        positions = torch.arange(start, start + next_ids.shape[1], device=self.output_device)
        out = self._mtp(next_ids, hidden, cache, positions, start + next_ids.shape[1], decode_rows=True)
        return self.lm_head(out[:, -1:] if last_only else out, vocab), out

    def mtp_forward_at(self, next_ids: torch.Tensor, hidden: torch.Tensor, cache: AttentionCache,
                       positions: torch.Tensor, *, vocab: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed-shape form of `mtp_forward` (see `forward_at`): positions [T] a device tensor."""
        if not cache.is_full():
            raise ValueError("a fixed-shape step needs the MTP cache allocated at full capacity")
        out = self._mtp(next_ids, hidden, cache, positions, cache.max_len)
        return self.lm_head(out, vocab), out

    def _mtp(self, next_ids, hidden, cache: AttentionCache, positions: torch.Tensor, kv_len: int,
             decode_rows: bool = False) -> torch.Tensor:
        if self.mtp is None:
            raise RuntimeError("this checkpoint has no MTP head (no mtp.* tensors)")
        ctx = self._context(positions, kv_len, False, self.output_device, decode_rows=decode_rows)
        embeds = self.embed_tokens(next_ids.to(self.device)).to(self.output_device)
        return self.mtp(embeds, hidden, cache, ctx)
