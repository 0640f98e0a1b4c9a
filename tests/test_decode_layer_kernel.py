"""An attention layer's decode step in one call (daemon/model/decode_layer.cpp), which `DecoderLayer` takes on
the CPU for the few rows of a decode or verify step where its products are float32 or int4: it runs the
modules' own ops through the same kernels, so it is held to them bit for bit, output and cache writes, for
each kind of attention layer (Llama's, Qwen3's plain q/k norms, Qwen3.6's gated one with zero-centred norms)."""

import pytest
import torch

from daemon.model import cpu_kernels
from daemon.model.cache import AttentionCache
from daemon.model.config import TextConfig
from daemon.model.linear import Linear
from daemon.model.rope import model_inverse_frequencies
from daemon.model.step_context import StepContext
from daemon.model.text_model import DecoderLayer
from daemon.model.w4a8 import W4A8Linear
from daemon.weights.loader import load_model
from mtpchat.config import Quantization

pytestmark = pytest.mark.skipif(cpu_kernels.unavailable() is not None,
                                reason=f"CPU kernels: {cpu_kernels.unavailable()}")


def _checkpoint(name: str, tiny, tiny_text):
    return tiny[name] if name in tiny else tiny_text[name]


@pytest.fixture
def calls(monkeypatch):
    """The arguments of each decode_layer call made, the op still running."""
    made = []
    kernel = torch.ops.mtpchat_cpu.decode_layer
    monkeypatch.setattr(torch.ops.mtpchat_cpu, "decode_layer", lambda *args: made.append(args) or kernel(*args))
    return made


def _one_call_then_modules(run, monkeypatch):
    """run() as it is, then again with every layer on its modules' own steps."""
    one_call = run()
    monkeypatch.setattr(DecoderLayer, "takes_one_call", lambda *_: False)
    return one_call, run()


@pytest.mark.parametrize("name", ["llama-tiny", "qwen3-tiny", "qwen3.6-dense-tiny"])
@pytest.mark.parametrize("rows", [1, 3])
def test_one_call_is_the_modules_ops(name, rows, tiny, tiny_text, calls, monkeypatch):
    config = TextConfig.from_checkpoint(_checkpoint(name, tiny, tiny_text))
    torch.manual_seed(0)
    layer = DecoderLayer(config, "full_attention")
    for parameter in layer.parameters():  # norms too: a fresh norm's weight would hide a wrong offset
        parameter.data.normal_(0, 0.2)
    x = torch.randn(1, rows, config.hidden_size)
    start = 17
    ctx = StepContext.build(torch.arange(start, start + rows), start + rows,
                            model_inverse_frequencies(config, "cpu", torch.float32), torch.float32, decode_rows=True)

    def run():
        torch.manual_seed(1)
        cache = AttentionCache.allocate(1, config.num_key_value_heads, 32, config.head_dim, "cpu", torch.float32)
        cache.keys.normal_(), cache.values.normal_()
        with torch.inference_mode():
            return layer(x, cache, ctx), cache

    (one_call, one_call_cache), (modules, modules_cache) = _one_call_then_modules(run, monkeypatch)
    assert len(calls) == 1 and torch.equal(one_call, modules)
    assert torch.equal(one_call_cache.keys, modules_cache.keys)
    assert torch.equal(one_call_cache.values, modules_cache.values)


@pytest.mark.parametrize("name", ["llama-tiny", "qwen3.6-dense-tiny"])
@pytest.mark.parametrize("method", ["none", "int4"])
def test_a_models_steps_are_its_modules_steps(name, method, tiny, tiny_text, calls, monkeypatch):
    """Prefill, a decode step and a 3-token verify of a loaded model, float32 or int4 (w4a8's layers: the
    call takes their blocks as they multiply them): logits, hidden states and caches, bit for bit."""
    model = load_model(_checkpoint(name, tiny, tiny_text), device="cpu", quantization=Quantization(method, 32))
    index = next(i for i, layer in enumerate(model.layers) if layer.is_attention)
    attention = model.layers[index]
    assert type(attention.self_attn.qkv_proj) is (W4A8Linear if method == "int4" else Linear)

    def run():
        cache = model.new_cache(64)
        with torch.inference_mode():
            outputs = [*model(torch.arange(3, 13)[None], cache, 0), *model(torch.tensor([[7]]), cache, 10),
                       *model(torch.tensor([[9, 4, 2]]), cache, 11)]
        return outputs, cache

    (one_call, one_call_cache), (modules, modules_cache) = _one_call_then_modules(run, monkeypatch)
    assert len(calls) == 2 * sum(layer.is_attention for layer in model.layers)  # the decode and the verify
    assert all(torch.equal(a, b) for a, b in zip(one_call, modules, strict=True))
    assert torch.equal(one_call_cache.layers[index].keys, modules_cache.layers[index].keys)
    assert torch.equal(one_call_cache.layers[index].values, modules_cache.layers[index].values)


def test_models_take_it_where_their_layers_fit(tiny, tiny_text, calls):
    """Every full-attention layer with a dense MLP of a float32 or int4 model, its MTP layer too; not a MoE
    layer, not one on torch's int8 kernel, not a DeltaNet one, not under autograd, not for a prefill's rows."""

    def count(path, quantization=Quantization(), tokens=1, grad=False, mtp=False) -> int:
        model = load_model(path, device="cpu", quantization=quantization)
        cache = model.new_cache(64)
        calls.clear()
        with torch.set_grad_enabled(grad), torch.inference_mode(not grad):
            logits, hidden = model(torch.arange(1, 1 + tokens)[None], cache, 0)
            if mtp:
                model.mtp_forward(torch.tensor([[5]]), hidden[:, -1:], model.new_mtp_cache(64), tokens - 1)
        return len(calls)

    dense = tiny["qwen3.6-dense-tiny"]
    attention_layers = TextConfig.from_checkpoint(dense).layer_types.count("full_attention")
    assert count(dense) == attention_layers and count(dense, mtp=True) == attention_layers + 1
    assert count(dense, tokens=12) == 0 and count(dense, grad=True) == 0
    assert count(dense, Quantization("int4", 32)) == attention_layers
    assert count(dense, Quantization("int8", 32)) == 0 and count(tiny["qwen3.6-moe-tiny"]) == 0
    assert count(tiny_text["llama-tiny"], tokens=5) == 4  # a verify's rows: each of its 4 layers


def test_kernel_refuses_what_it_does_not_compute():
    hidden, heads, kv_heads, dim = 64, 4, 2, 16
    w = {name: torch.randn(rows, cols) for name, (rows, cols) in dict(
        qkv=((heads + 2 * kv_heads) * dim, hidden), o=(hidden, heads * dim), gate_up=(256, hidden),
        down=(hidden, 128)).items()}
    norm = torch.zeros(hidden)
    cos, sin = torch.ones(1, dim), torch.zeros(1, dim)
    keys, values = torch.zeros(1, kv_heads, 8, dim), torch.zeros(1, kv_heads, 8, dim)

    def call(qkv=(w["qkv"], None, None), x=torch.randn(1, 1, hidden), q_norm=None, k_norm=None, gated=False):
        return torch.ops.mtpchat_cpu.decode_layer(x, norm, *qkv, q_norm, k_norm, w["o"], None, None, norm,
                                                  w["gate_up"], None, None, w["down"], None, None, cos, sin, keys,
                                                  values, 0, heads, gated, 1.0, 1e-6)

    assert call().shape == (1, 1, hidden)
    with pytest.raises(RuntimeError, match="qkv_proj's rows"):
        call(gated=True)  # a gated layer's query rows are twice as many
    with pytest.raises(RuntimeError, match="a float32 w, or int4 codes with d and m"):
        call(qkv=(w["qkv"], w["qkv"], None))
    with pytest.raises(RuntimeError, match="both q/k norms or neither"):
        call(q_norm=torch.zeros(dim))
    with pytest.raises(RuntimeError, match="one sequence's rows"):
        call(x=torch.randn(2, 1, hidden))


def test_a_moved_layer_finds_its_new_weights(tiny_text, monkeypatch):
    """The layer finds its weights for the call once; a move that gives it new tensors (as placing a meta-built
    model does) makes the next step use them rather than the ones it found before."""
    config = TextConfig.from_checkpoint(tiny_text["llama-tiny"])
    torch.manual_seed(0)
    layer = DecoderLayer(config, "full_attention")
    x = torch.randn(1, 1, config.hidden_size)
    ctx = StepContext.build(torch.arange(3, 4), 4, model_inverse_frequencies(config, "cpu", torch.float32),
                            torch.float32, decode_rows=True)

    def run():
        cache = AttentionCache.allocate(1, config.num_key_value_heads, 8, config.head_dim, "cpu", torch.float32)
        with torch.inference_mode():
            return layer(x, cache, ctx)

    before = run()
    state = {name: 2 * tensor for name, tensor in layer.state_dict().items()}
    layer.to("meta").to_empty(device="cpu")  # new tensors, as a meta-built model's placement gives it
    layer.load_state_dict(state)
    moved, modules = _one_call_then_modules(run, monkeypatch)
    assert not torch.equal(moved, before) and torch.equal(moved, modules)
