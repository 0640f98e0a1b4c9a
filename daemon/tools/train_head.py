"""`mtpchatd train-head` (also spelled `mtpchat train-head`): an MTP head for a trunk that shipped without
one, by self-distillation.

The head is the module Qwen3.5/3.6 ship (`MTPHead`: fc over [norm(embed(t_{i+1})) | norm(h_i)], one
decoder layer of the trunk's kind, a final norm, the trunk's embedding and lm_head). It must predict
what the trunk will say, not what some corpus says, so every target comes from the trunk itself:

1. replies: the trunk's replies to a built-in, varied prompt set (daemon/tools/head_prompts.py: chat,
   code, technical questions, lists, multi-turn conversations), generated in batches of left-padded
   prompts, sampled at the checkpoint's own sampling defaults with thinking off (what a reply gets when
   nobody sets them: the demo's temperature 0.2, top-p 0.9, repetition penalty 1.1), so the head learns
   from the text it will draft for; `--replies greedy` decodes them greedily instead.
2. features: one teacher-forced pass of our trunk over each prompt + reply gives the post-norm hidden
   h_i the head drafts from, and the trunk's distribution for the token after next, softmax(lm_head(
   h_{i+1})), kept as its top `TOP_K` tokens.
3. training: the head's distribution over the whole vocabulary against those targets (cross-entropy),
   on the reply positions (where drafting happens); the head's attention still sees the prompt. The
   head is also run on its own outputs, as the drafter chains it for the second draft (`chain` steps,
   see `head_loss`): trained on the trunk's hiddens alone, its second drafts were right 7% of the time.
   Held-out acceptance is the share of held-out reply positions where the head's top token is the
   trunk's: what greedy acceptance at each draft position measures.

Every stage is saved in a work directory, so a rerun resumes where it stopped; the seed fixes the
prompt split, the sampled replies, the initial head and the batch order. Output: `mtp_head.safetensors` (the `mtp.*`
tensors in half precision, which `CheckpointFiles` picks up beside a checkpoint) and `mtp_head.json`
recording what it was trained from and how.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from daemon.engine.sampling import SamplingParams, choose
from daemon.model.linear import checkpoint_tensors
from daemon.model.step_context import StepContext
from daemon.model.text_model import MTPHead, QwenModel
from daemon.tools.head_prompts import chat_prompts, head_prompts
from daemon.weights.checkpoint import HEAD_FILE

TOP_K = 32  # the trunk's distribution is kept as its top-k tokens (renormalised)
HEAD_RECORD = "mtp_head.json"  # beside HEAD_FILE: what the head was trained from and how

Prompt = str | list[dict]  # a text (one user turn) or a conversation (messages), as user_prompts takes them
REPLY_MODES = ("sampled", "greedy")
LM_HEAD_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def prompt_set(name: str) -> dict[str, list[Prompt]]:
    """The built-in prompts by kind: "v1" the first demo head's (chat only), "v2" chat, code, technical,
    lists and conversations (daemon/tools/head_prompts.py)."""
    if name == "v1":
        return {"chat": chat_prompts()}
    if name == "v2":
        return head_prompts()
    raise ValueError(f"unknown prompt set {name!r} (v1 or v2)")


PROMPT_SET_SIZES = {name: sum(map(len, prompt_set(name).values())) for name in ("v1", "v2")}


@dataclass(frozen=True)
class TrainSettings:
    prompts: int = PROMPT_SET_SIZES["v2"]  # how many of the built-in prompts to use (a seeded sample)
    held_out: int = 60  # of those, kept for measuring acceptance
    max_new_tokens: int = 128
    generate_batch: int = 32
    steps: int = 800
    batch: int = 8  # sequences per training step
    lr: float = 1e-3
    eval_every: int = 100
    seed: int = 0
    chain: int = 2  # draft steps trained in a chain: the head also learns from its own outputs
    prompt_set: str = "v2"  # which built-in prompts (`prompt_set`); a record without one is "v1"
    replies: str = "sampled"  # the trunk's replies at its sampling defaults (seeded), or "greedy"
    # the training loss's lm_head product (most of a step's work): "bfloat16" is ~2x faster on CPUs with
    # AVX512-BF16 (and GPUs), slower without; held-out measurements always use float32
    lm_head_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.prompt_set not in PROMPT_SET_SIZES:
            raise ValueError(f"unknown prompt set {self.prompt_set!r} (v1 or v2)")
        if self.replies not in REPLY_MODES:
            raise ValueError(f"replies must be one of {', '.join(REPLY_MODES)}, got {self.replies!r}")
        if self.lm_head_dtype not in LM_HEAD_DTYPES:
            raise ValueError(f"lm_head_dtype must be one of {', '.join(LM_HEAD_DTYPES)}, got {self.lm_head_dtype!r}")
        size = PROMPT_SET_SIZES[self.prompt_set]
        if not 0 < self.held_out < self.prompts <= size:
            raise ValueError(f"need 0 < held_out < prompts <= {size} (prompt set {self.prompt_set})")
        if min(self.max_new_tokens, self.generate_batch, self.steps, self.batch, self.eval_every, self.chain) <= 0:
            raise ValueError("max_new_tokens, generate_batch, steps, batch, eval_every and chain must be positive")


def _interleaved(groups: list[list]) -> list:
    """All items of `groups`, each group's in its order, mixed so that every prefix holds each group in
    proportion to its size (next: the group furthest behind its share)."""
    total, taken, out = sum(map(len, groups)), [0] * len(groups), []
    for n in range(1, total + 1):
        behind = [(len(g) * n / total - taken[i], -i) for i, g in enumerate(groups) if taken[i] < len(g)]
        i = -max(behind)[1]
        out.append(groups[i][taken[i]])
        taken[i] += 1
    return out


def kinds_and_prompts(settings: TrainSettings) -> list[tuple[str, Prompt]]:
    """The seeded sample of the built-in prompts a run uses, with each one's kind, in its order: the
    first `held_out` are held out (a prompt whose reply is under 2 tokens is dropped, which only moves
    the split later). "v1": one seeded shuffle. "v2": each kind shuffled (one seeded generator, the
    kinds in order), then interleaved so that every prefix, the held-out part and its first few
    included, holds every kind in proportion (chat 43%, code 19%, technical 10%, lists 7%,
    conversations 21%)."""
    by_kind = prompt_set(settings.prompt_set)
    rng = random.Random(settings.seed)
    if settings.prompt_set == "v1":
        texts = by_kind["chat"]
        rng.shuffle(texts)
        return [("chat", text) for text in texts[:settings.prompts]]
    groups = []
    for kind, prompts in by_kind.items():
        rng.shuffle(prompts)
        groups.append([(kind, prompt) for prompt in prompts])
    return _interleaved(groups)[:settings.prompts]


def prompt_sample(settings: TrainSettings) -> list[Prompt]:
    """`kinds_and_prompts` without the kinds."""
    return [prompt for _, prompt in kinds_and_prompts(settings)]


def recorded_settings(record: dict) -> TrainSettings:
    """The settings a head record holds; one written before prompt sets and sampled replies existed
    was trained on "v1" with greedy replies."""
    return TrainSettings(**{"prompt_set": "v1", "replies": "greedy", **record["settings"]})


def held_out_prompts(checkpoint: Path) -> list[Prompt]:
    """The prompts the head beside `checkpoint` never trained on, from the settings its record holds
    (the default settings when there is no record): texts and conversations (lists of messages)."""
    record = Path(checkpoint) / HEAD_RECORD
    settings = recorded_settings(json.loads(record.read_text())) if record.exists() else TrainSettings()
    return prompt_sample(settings)[:settings.held_out]


def reply_sampling(checkpoint: Path, settings: TrainSettings) -> dict:
    """The sampling fields the trunk's replies are generated with: the checkpoint's defaults with thinking
    off (its generation_config.json; daemon.weights.sampling_defaults), or none (greedy)."""
    from daemon.weights.sampling_defaults import checkpoint_sampling

    return checkpoint_sampling(checkpoint).defaults(thinking=False) if settings.replies == "sampled" else {}


def trunk_fingerprint(checkpoint: Path) -> str:
    """Identifies the trunk: config.json plus the weight files' names and sizes (hashing GBs is too slow)."""
    digest = hashlib.sha256((checkpoint / "config.json").read_bytes())
    for f in sorted(checkpoint.glob("*.safetensors")):
        if f.name != HEAD_FILE:
            digest.update(f"{f.name}:{f.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def _save(obj, path: Path) -> None:
    partial = path.with_suffix(".partial")
    torch.save(obj, partial)
    partial.rename(path)


class _BatchPenalties:
    """The engine's repetition, presence and frequency penalties (daemon/engine/penalties.py) for a batch
    of rows, each with its own prompt and reply so far."""

    def __init__(self, params: SamplingParams, prompts: list[list[int]], vocab: int, device: torch.device):
        self.params = params
        if params.penalised:
            self.in_prompt = torch.zeros(len(prompts), vocab, dtype=torch.bool, device=device)
            for row, prompt in enumerate(prompts):
                self.in_prompt[row, torch.tensor(prompt, dtype=torch.long, device=device)] = True
            self.counts = torch.zeros(len(prompts), vocab, dtype=torch.int32, device=device)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        params = self.params
        if not params.penalised:
            return logits
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        counts = self.counts.to(logits.dtype)
        present = counts > 0
        if params.repetition_penalty != 1:
            scaled = torch.where(logits > 0, logits / params.repetition_penalty, logits * params.repetition_penalty)
            logits = torch.where(present | self.in_prompt, scaled, logits)
        return logits - params.frequency_penalty * counts - params.presence_penalty * present.to(logits.dtype)

    def record(self, tokens: torch.Tensor) -> None:
        if self.params.penalised:
            self.counts[torch.arange(len(tokens), device=tokens.device), tokens] += 1


@torch.inference_mode()
def reply_batch(model: QwenModel, prompts: list[list[int]], max_new_tokens: int, stop: int,
                params: SamplingParams = SamplingParams(), generator: torch.Generator | None = None) -> list[list[int]]:
    """Replies to several prompts at once: left-padded, padding hidden by a key mask (RoPE is relative, so
    a row's shifted positions change nothing). Each token is chosen as the engine chooses it under
    `params` (penalties, then `daemon.engine.sampling.choose`: the argmax when greedy, else a draw from
    `generator`). Each reply ends at its stop token, if any."""
    width = max(map(len, prompts))
    device = model.device
    ids = torch.tensor([[stop] * (width - len(p)) + p for p in prompts], device=device)
    key_mask = torch.ones(len(prompts), width + max_new_tokens, dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompts):
        key_mask[row, :width - len(prompt)] = False
    cache = model.new_cache(width + max_new_tokens, batch=len(prompts))
    logits, _ = model(ids, cache, 0, last_only=True, key_mask=key_mask)
    penalties = _BatchPenalties(params, prompts, logits.shape[-1], device)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        token, _ = choose(penalties.apply(logits), params, generator)
        penalties.record(token)
        return token

    tokens = [pick(logits[:, -1])]
    for step in range(max_new_tokens - 1):
        if bool((torch.stack(tokens) == stop).any(0).all()):
            break
        logits, _ = model(tokens[-1][:, None], cache, width + step, key_mask=key_mask)
        tokens.append(pick(logits[:, -1]))
    replies = torch.stack(tokens, dim=1).tolist()
    return [row[:row.index(stop) + 1] if stop in row else row for row in replies]


def generate_replies(model: QwenModel, stop: int, prompts: list[list[int]], settings: TrainSettings,
                     sampling: dict, work: Path, show: Callable[[str], None]) -> list[list[int]]:
    """The trunk's replies under `sampling` (sampling fields; {}: greedy), one batch at a time, saved after
    each (resumable). Each batch draws from its own generator, seeded by the run's seed and the batch's
    first prompt, so a resumed run gives the same replies. A hybrid trunk's DeltaNet state would take in
    the padding, so it decodes one prompt at a time."""
    path = work / "replies.pt"
    replies: list[list[int]] = torch.load(path) if path.exists() else []
    batch = 1 if model.config.is_hybrid else settings.generate_batch
    params = SamplingParams(**sampling)
    started, done_before = time.perf_counter(), len(replies)
    while len(replies) < len(prompts):
        generator = torch.Generator(model.device).manual_seed(settings.seed * 1_000_003 + len(replies))
        replies += reply_batch(model, prompts[len(replies):len(replies) + batch], settings.max_new_tokens, stop,
                               params, generator)
        _save(replies, path)
        rate = (len(replies) - done_before) / (time.perf_counter() - started)
        show(f"trunk replies {len(replies)}/{len(prompts)} ({rate:.2f}/s)")
    return replies


@torch.inference_mode()
def trunk_features(model: QwenModel, sequences: list[tuple[list[int], int]], work: Path,
                   show: Callable[[str], None]) -> list[dict]:
    """Per sequence: tokens, the first reply position, post-norm hiddens and the top-k next-next targets."""
    path = work / "features.pt"
    if path.exists():
        return torch.load(path)
    features = []
    for n, (tokens, reply_start) in enumerate(sequences, start=1):
        ids = torch.tensor([tokens], device=model.device)
        _, hidden = model(ids, model.new_cache(len(tokens)), 0)
        hidden = hidden[0].float()
        probs, top = F.softmax(model.lm_head(hidden[1:]).float(), dim=-1).topk(TOP_K, dim=-1)
        features.append({"tokens": torch.tensor(tokens), "reply_start": reply_start, "hidden": hidden.cpu(),
                         "target_ids": top.cpu(), "target_probs": (probs / probs.sum(-1, keepdim=True)).cpu()})
        if n % 20 == 0 or n == len(sequences):
            show(f"trunk features {n}/{len(sequences)}")
    _save(features, path)
    return features


def _inputs(features: list[dict], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded batch: next tokens [B, T] and hiddens [B, T, H]; column i pairs h_i with t_{i+1}."""
    length = max(len(f["tokens"]) for f in features) - 1
    next_ids = torch.zeros(len(features), length, dtype=torch.long)
    hidden = torch.zeros(len(features), length, features[0]["hidden"].shape[-1])
    for b, f in enumerate(features):
        n = len(f["tokens"]) - 1
        next_ids[b, :n] = f["tokens"][1:]
        hidden[b, :n] = f["hidden"][:-1]
    return next_ids.to(device), hidden.to(device)


def _targets(features: list[dict], depth: int, device: torch.device):
    """Where chain step `depth` (0: from the trunk's hidden, 1: from the head's own output, ...) is trained,
    and its targets. Column i of step `depth` drafts t_{i+depth+2}: the trunk's distribution at i+depth+1.
    Trained columns: from reply_start - 1 (the pair that drafts the second reply token) while a target exists."""
    rows, cols, target_ids, target_probs = [], [], [], []
    for b, f in enumerate(features):
        n, first = len(f["tokens"]) - 1 - depth, f["reply_start"] - 1
        rows += [b] * (n - first)
        cols += range(first, n)
        target_ids.append(f["target_ids"][first + depth:n + depth])
        target_probs.append(f["target_probs"][first + depth:n + depth])
    return ((torch.tensor(rows), torch.tensor(cols)), torch.cat(target_ids).to(device),
            torch.cat(target_probs).to(device))


def head_loss(model: QwenModel, features: list[dict], chain: int,
              lm_head_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, list[float]]:
    """Cross-entropy of the head against the trunk's top-k targets, averaged over `chain` chained draft
    steps, and each step's top-1 agreement (the lm_head product in `lm_head_dtype`, the rest in float32).
    Step d+1 runs the head on its own step-d outputs paired with the true next tokens, as
    `MTPDrafter.propose` chains at inference; it attends to chained pairs, not to the true ones as at
    inference, but RoPE makes its scores depend only on relative positions, so positions restart at 0.
    Training it makes the second and later drafts worth making."""
    next_ids, hidden = _inputs(features, model.device)
    weight = model.lm_head.weight.to(lm_head_dtype)
    losses, agreements = [], []
    for depth in range(chain):
        ids = next_ids[:, depth:]
        batch, length = ids.shape
        cache = model.new_mtp_cache(length, batch=batch)
        ctx = StepContext.build(torch.arange(length, device=model.device), length,
                                model.rotary_frequencies(model.device), model.dtype)
        hidden = model.mtp(model.embed_tokens(ids), hidden[:, :length], cache, ctx)
        where, target_ids, target_probs = _targets(features, depth, model.device)
        log_probs = F.log_softmax(F.linear(hidden[where].to(lm_head_dtype), weight).float(), dim=-1)
        losses.append(-(target_probs * log_probs.gather(1, target_ids)).sum(-1).mean())
        agreements.append((log_probs.argmax(-1) == target_ids[:, 0]).float().mean().item())
    return torch.stack(losses).mean(), agreements


def new_head(model: QwenModel, seed: int) -> MTPHead:
    """A head started from the trunk: its layer a copy of the trunk's last layer, the final norm a copy of the
    trunk's, fc passing the hidden through (identity on that half) and a small seeded random embedding half."""
    config = model.config
    torch.manual_seed(seed)
    head = MTPHead(config).to(device=model.device, dtype=torch.float32)
    with torch.no_grad():
        head.layers[0].load_state_dict(model.layers[-1].state_dict())
        head.norm.load_state_dict(model.norm.state_dict())
        hidden = config.hidden_size
        head.fc.weight.zero_()
        head.fc.weight[:, :hidden].normal_(0.0, 0.02)
        head.fc.weight[:, hidden:].copy_(torch.eye(hidden))
    return head


def _lr(step: int, settings: TrainSettings) -> float:
    warmup = max(settings.steps // 20, 1)
    if step < warmup:
        return settings.lr * (step + 1) / warmup
    return settings.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(settings.steps - warmup, 1)))


def _order(n: int, step: int, batch: int, seed: int) -> list[int]:
    """The sequences of training step `step`: epochs of seeded shuffles, so a resumed run sees the same ones."""
    per_epoch = max(n // batch, 1)
    epoch, offset = divmod(step, per_epoch)
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[offset * batch:(offset + 1) * batch]


def evaluate(model: QwenModel, features: list[dict], settings: "TrainSettings") -> dict:
    """Held-out loss and acceptance per chained draft step (position-weighted): `acceptance` is the first
    draft's, `acceptance_by_step` every step's given true earlier tokens."""
    total_loss, total_agree, total = 0.0, [0.0] * settings.chain, 0
    with torch.no_grad():
        for i in range(0, len(features), settings.batch):
            chunk = features[i:i + settings.batch]
            positions = sum(len(f["tokens"]) - f["reply_start"] for f in chunk)
            loss, agreements = head_loss(model, chunk, settings.chain)
            total_loss += loss.item() * positions
            total_agree = [t + a * positions for t, a in zip(total_agree, agreements)]
            total += positions
    by_step = [round(a / total, 4) for a in total_agree]
    return {"loss": total_loss / total, "acceptance": by_step[0], "acceptance_by_step": by_step}


def save_head(head: MTPHead, out_dir: Path, record: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"mtp.{name}": t.detach().to(torch.float16).contiguous().cpu()
               for name, t in checkpoint_tensors(head).items()}  # the checkpoint's layout: q/k/v, gate/up apart
    save_file(tensors, out_dir / HEAD_FILE, metadata={"format": "pt"})
    (out_dir / HEAD_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return out_dir / HEAD_FILE


def train_head(checkpoint: Path, out_dir: Path, work: Path, settings: TrainSettings,
               show: Callable[[str], None] = lambda line: None, command: str = "") -> dict:
    """Run (or resume) every stage; write the head to `out_dir`; return the training record."""
    from daemon.engine.reply import user_prompts
    from daemon.weights.loader import load_model

    checkpoint, out_dir, work = Path(checkpoint), Path(out_dir), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    fingerprint = trunk_fingerprint(checkpoint)
    sampling = reply_sampling(checkpoint, settings)
    identity = {"trunk": fingerprint, "sampling": sampling,
                "settings": {k: v for k, v in asdict(settings).items()
                             if k in ("prompts", "held_out", "max_new_tokens", "seed", "prompt_set", "replies")}}
    marker = work / "run.json"
    if marker.exists() and json.loads(marker.read_text()) != identity:
        raise ValueError(f"{work} holds a run for another trunk or prompt set; use a fresh --work directory")
    marker.write_text(json.dumps(identity))

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    kinds, texts = zip(*kinds_and_prompts(settings))
    prompts = user_prompts(tokenizer, list(texts))
    model = load_model(checkpoint, device=None, dtype=torch.float32)
    replies = generate_replies(model, tokenizer.eos_token_id, prompts, settings, sampling, work, show)
    kept = [(kind, p + r, len(p)) for kind, p, r in zip(kinds, prompts, replies) if len(r) >= 2]
    features = trunk_features(model, [(tokens, start) for _, tokens, start in kept], work, show)
    held_out, train = features[:settings.held_out], features[settings.held_out:]
    held_out_kinds = [kind for kind, _, _ in kept[:settings.held_out]]

    model.mtp = new_head(model, settings.seed)
    model.mtp.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(model.mtp.parameters(), lr=settings.lr, weight_decay=0.0)
    state_path = work / "state.pt"
    step, history = 0, []
    if state_path.exists():
        state = torch.load(state_path)
        model.mtp.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
    if not history:
        history.append({"step": 0, **evaluate(model, held_out, settings)})
    started, first_step = time.perf_counter(), step
    while step < settings.steps:
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, settings)
        loss, agreements = head_loss(model, [train[i] for i in _order(len(train), step, settings.batch, settings.seed)],
                                     settings.chain, LM_HEAD_DTYPES[settings.lm_head_dtype])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.mtp.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % settings.eval_every == 0 or step == settings.steps:
            history.append({"step": step, **evaluate(model, held_out, settings)})
            _save({"head": model.mtp.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                   "history": history}, state_path)
        per_step = (time.perf_counter() - started) / (step - first_step)
        last = history[-1]
        show(f"step {step}/{settings.steps}  loss {loss.item():.3f}  batch top-1 {agreements[0]:.2f}  held-out "
             f"acceptance {'/'.join(f'{a:.3f}' for a in last['acceptance_by_step'])} (step {last['step']})  "
             f"{per_step:.1f} s/step  "
             f"eta {per_step * (settings.steps - step) / 60:.0f} min")
    by_kind = {}
    for kind in dict.fromkeys(held_out_kinds):
        chosen = [f for f, k in zip(held_out, held_out_kinds) if k == kind]
        by_kind[kind] = {"sequences": len(chosen), **evaluate(model, chosen, settings)}
    record = {
        "trained_from": {"checkpoint": str(checkpoint), "trunk_fingerprint": fingerprint,
                         "model_type": model.config.model_type},
        "settings": asdict(settings),
        "reply_sampling": sampling or "greedy",
        "command": command,
        "sequences": {"train": len(train), "held_out": len(held_out),
                      "train_positions": sum(len(f["tokens"]) - f["reply_start"] for f in train)},
        "history": history,
        "held_out_by_kind": by_kind,
        "torch": torch.__version__,
    }
    save_head(model.mtp, out_dir, record)
    return record


def progress_line(line: str) -> None:
    """One status line, rewritten in place on a terminal."""
    if sys.stderr.isatty():
        print(f"\r\033[K{line}", end="", file=sys.stderr, flush=True)
    else:
        print(line, file=sys.stderr, flush=True)
