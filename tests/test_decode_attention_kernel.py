"""The decode-rows attention kernel (daemon/model/decode_attention.cpp): rotation, cache write and
attention for the few query rows of a decode or verify step, which `Attention` takes on the CPU.

Rotation and cache write are the same float32 operations as torch's path, so they are compared bit for
bit. The attention output is held to the formula in float64. The bound follows the kernel's roundings
(u = 2^-24): a rotated component is off by ≤ 3u of |x·c| + |x'·s|; a score (a dot product of D terms in
16 lanes, then the scale) by ≤ (D/16 + 10)u of S = scale · Σ|q_i·k_i|; its exponential (the kernel's
own, within 3 ulp) then by ≤ 3 such score errors + 4u relative; the softmax sum (16 lanes: keys/16 + 4
roundings) and the division add keys/16 + 5, and the weighted sum of values (in key order) keys + 2,
all relative to Σ_j p_j·|v_j|. So |out - exact| ≤ (3(D/16 + 10)·S + 17·keys/16 + 11)·u · Σ_j p_j·|v_j|,
doubled for the first-order terms this leaves out; it holds on any CPU, as the kernel's order is fixed
in its source.
"""

import pytest
import torch

from daemon.model import cpu_kernels
from daemon.model.attention import Attention
from daemon.model.cache import AttentionCache
from daemon.model.config import TextConfig
from daemon.model.rope import apply_rotary, inverse_frequencies, rotary_tables
from daemon.model.step_context import StepContext

pytestmark = pytest.mark.skipif(cpu_kernels.unavailable() is not None,
                                reason=f"CPU kernels: {cpu_kernels.unavailable()}")

U = 2.0**-24


def _case(rows, heads, kv_heads, dim, rot, first, seed=0):
    g = torch.Generator().manual_seed(seed)
    query, key, value = (torch.randn(rows, n, dim, generator=g) for n in (heads, kv_heads, kv_heads))
    cos, sin = rotary_tables(torch.arange(first, first + rows), inverse_frequencies(rot, 10_000.0), torch.float32)
    cache_keys = torch.randn(1, kv_heads, first + rows + 3, dim, generator=g)  # room past the rows, untouched
    cache_values = torch.randn(1, kv_heads, first + rows + 3, dim, generator=g)
    return query, key, value, cos, sin, cache_keys, cache_values


def _attend(case, first):
    query, key, value, cos, sin, cache_keys, cache_values = case
    keys, values = cache_keys.clone(), cache_values.clone()
    out = torch.ops.mtpchat_cpu.attend_rows(query, key, value, cos, sin, keys, values, first)
    return out, keys, values


def _exact(case, first, keys, values):
    """The formula in float64 over the cache the kernel wrote (keys, values), and the bound from the module
    docstring."""
    query, key, _, cos, sin, _, _ = case
    rows, heads, dim = query.shape
    group = heads // key.shape[1]
    rotated = apply_rotary(query.double()[None], cos.double(), sin.double())[0]
    out, bound = torch.empty(rows, heads, dim, dtype=torch.float64), torch.empty(rows, heads, 1, dtype=torch.float64)
    for t in range(rows):
        for h in range(heads):
            k, v = keys[0, h // group, :first + t + 1].double(), values[0, h // group, :first + t + 1].double()
            q = rotated[t, h]
            p = torch.softmax(k @ q / dim**0.5, dim=0)
            out[t, h] = p @ v
            spread = ((q.abs() * k.abs()).sum(-1) / dim**0.5).max()
            count = k.shape[0]
            bound[t, h] = 2 * (3 * (dim / 16 + 10) * spread + 17 * count / 16 + 11) * U * (p @ v.abs()).max()
    return out.reshape(rows, -1), bound.expand(rows, heads, dim).reshape(rows, -1)


@pytest.mark.parametrize("heads,kv_heads,dim,rot", [(9, 3, 64, 64), (4, 2, 32, 8), (8, 2, 256, 64)])
def test_rows_rotate_store_and_attend(heads, kv_heads, dim, rot):
    """The demo's Llama heads (whole-head rotation), the tiny Qwen's and Qwen3.6's (a quarter rotated)."""
    first, rows = 37, 3
    case = _case(rows, heads, kv_heads, dim, rot, first)
    out, keys, values = _attend(case, first)
    query, key, value, cos, sin, cache_keys, cache_values = case
    stored = apply_rotary(key[None], cos, sin)[0].transpose(0, 1)
    assert torch.equal(keys[0, :, first:first + rows], stored)  # torch's rotation, bit for bit
    assert torch.equal(values[0, :, first:first + rows], value.transpose(0, 1))
    for new, old in ((keys, cache_keys), (values, cache_values)):  # nothing else written
        assert torch.equal(new[:, :, :first], old[:, :, :first])
        assert torch.equal(new[:, :, first + rows:], old[:, :, first + rows:])
    exact, bound = _exact(case, first, keys, values)
    assert ((out.double() - exact).abs() <= bound).all()


def test_each_row_is_the_decode_step_at_its_position_whatever_the_threads():
    """A verify's rows equal 1-row calls at their positions, bit for bit, at 1 and 2 threads (600 keys:
    enough that the kernel shares heads out among threads)."""
    first, rows = 600, 4
    case = _case(rows, 9, 3, 64, 64, first, seed=1)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(_attend(case, first))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results))
    out, keys, values = results[0]
    query, key, value, cos, sin, _, _ = case
    for t in range(rows):  # row t alone, over the cache as the rows before it left it
        alone = torch.ops.mtpchat_cpu.attend_rows(query[t:t + 1], key[t:t + 1], value[t:t + 1], cos[t:t + 1],
                                                  sin[t:t + 1], keys.clone(), values.clone(), first + t)
        assert torch.equal(alone, out[t:t + 1])


def test_attention_takes_the_kernel_for_decode_rows_only_outside_autograd(tiny, monkeypatch):
    """The tiny Qwen3.6 attention layer (gated, q/k norms, a quarter of each head rotated): its decode rows
    through the kernel leave the cache torch's path leaves, bit for bit, and attend within 2^-20 of it
    (relative to the largest output: both are float32 attentions over ≤ 24 keys, summed in two orders)."""
    config = TextConfig.from_checkpoint(tiny["qwen3.6-dense-tiny"])
    torch.manual_seed(0)
    layer = Attention(config).eval()
    x = torch.randn(1, 3, config.hidden_size)
    inv_freq = inverse_frequencies(config.rotary_dim, config.rope_theta)
    ctx = StepContext.build(torch.arange(20, 23), 23, inv_freq, torch.float32, decode_rows=True)

    def run(kernel: bool):
        monkeypatch.setattr(Attention, "kernel_rows", lambda *_: kernel)
        torch.manual_seed(1)
        cache = AttentionCache.allocate(1, config.num_key_value_heads, 64, config.head_dim, "cpu", torch.float32)
        cache.keys.normal_(), cache.values.normal_()
        with torch.inference_mode():
            return layer(x, cache, ctx), cache

    (kernel, kernel_cache), (torch_path, torch_cache) = run(True), run(False)
    assert torch.equal(kernel_cache.keys, torch_cache.keys) and torch.equal(kernel_cache.values, torch_cache.values)
    assert (kernel - torch_path).abs().max() <= 2**-20 * torch_path.abs().max()
    monkeypatch.undo()
    calls = []
    width = config.num_attention_heads * config.head_dim
    monkeypatch.setattr(torch.ops.mtpchat_cpu, "attend_rows",
                        lambda *args: calls.append(args) or torch.zeros(1, 3, width))
    with torch.no_grad():  # grad enabled below: torch's path, which autograd differentiates
        layer(x, AttentionCache.allocate(1, 2, 64, config.head_dim, "cpu", torch.float32), ctx)
    layer(x, AttentionCache.allocate(1, 2, 64, config.head_dim, "cpu", torch.float32), ctx).sum().backward()
    assert len(calls) == 1 and layer.qkv_proj.weight.grad is not None


def test_kernel_refuses_what_it_does_not_compute():
    query, key, value, cos, sin, cache_keys, cache_values = _case(2, 4, 2, 32, 8, 5)
    attend = torch.ops.mtpchat_cpu.attend_rows
    with pytest.raises(RuntimeError, match="float32 CPU"):
        attend(query.double(), key, value, cos, sin, cache_keys, cache_values, 5)
    with pytest.raises(RuntimeError, match="D of 16"):
        attend(query[..., :24], key[..., :24], value[..., :24], cos, sin, cache_keys, cache_values, 5)
    with pytest.raises(RuntimeError, match="H a multiple of Hkv"):
        attend(query[:, :3], key, value, cos, sin, cache_keys, cache_values, 5)
    with pytest.raises(RuntimeError, match="holding positions"):
        attend(query, key, value, cos, sin, cache_keys, cache_values, cache_keys.shape[2] - 1)


def test_kernel_takes_one_sequence_with_its_batch_dimension():
    """The layer passes its [1, T, ...] views as they are: the same bits and cache writes as [T, ...]."""
    query, key, value, cos, sin, cache_keys, cache_values = _case(3, 4, 2, 32, 8, 5)
    keys_b, values_b = cache_keys.clone(), cache_values.clone()
    attend = torch.ops.mtpchat_cpu.attend_rows
    flat = attend(query, key, value, cos, sin, cache_keys, cache_values, 5)
    batched = attend(query[None], key[None], value[None], cos, sin, keys_b, values_b, 5)
    assert batched.shape == (1, 3, 4 * 32) and torch.equal(batched[0], flat)
    assert torch.equal(keys_b, cache_keys) and torch.equal(values_b, cache_values)
    two = [t[None].expand(2, *t.shape) for t in (query, key, value)]
    with pytest.raises(RuntimeError, match=r"query \[\(1,\) T, H, D\]"):  # two sequences: not its rows
        attend(*two, cos, sin, keys_b, values_b, 5)
