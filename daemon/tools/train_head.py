"""`mtpchatd train-head` (also spelled `mtpchat train-head`): an MTP head for a trunk that shipped without one, by self-distillation.

The head is the module Qwen3.5/3.6 ship (`MTPHead`: fc over [norm(embed(t_{i+1})) | norm(h_i)], one
decoder layer of the trunk's kind, a final norm, the trunk's embedding and lm_head). It must predict
what the trunk will say, not what some corpus says, so every target comes from the trunk itself:

1. replies: the trunk's greedy replies to a built-in, varied prompt set (`chat_prompts`), generated in
   batches of left-padded prompts.
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
prompt split, the initial head and the batch order. Output: `mtp_head.safetensors` (the `mtp.*`
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

from daemon.model.step_context import StepContext
from daemon.model.text_model import MTPHead, QwenModel
from daemon.weights.checkpoint import HEAD_FILE

TOP_K = 32  # the trunk's distribution is kept as its top-k tokens (renormalised)
HEAD_RECORD = "mtp_head.json"  # beside HEAD_FILE: what the head was trained from and how

TOPICS = [
    "the ocean", "black holes", "photosynthesis", "the French Revolution", "Python lists", "binary search",
    "a healthy breakfast", "learning a new language", "climate change", "the immune system", "electric cars",
    "volcanoes", "the history of the internet", "chess", "saving money", "sleep", "coffee", "the Roman Empire",
    "machine learning", "recursion", "growing tomatoes", "the moon landing", "honeybees", "time management",
    "SQL joins", "git branches", "rainbows", "earthquakes", "public speaking", "the water cycle", "Shakespeare",
    "dinosaurs", "how HTTP works", "vaccines", "running a marathon", "baking bread", "the stock market",
    "friendship", "electricity", "Mount Everest", "cats", "the solar system", "writing a resume", "jazz",
    "the human heart", "glaciers", "ancient Egypt", "JavaScript promises", "sorting algorithms", "gardening",
    "meditation", "renewable energy", "the printing press", "bicycles", "octopuses", "the Great Wall of China",
    "regular expressions", "unit testing", "chocolate", "thunderstorms", "negotiating a salary", "the Olympics",
    "opera", "the periodic table", "bridges", "rainforests", "linked lists", "the Renaissance", "yoga",
    "airplanes", "coral reefs", "the Cold War", "Docker containers", "first aid", "soap bubbles", "penguins",
    "budget travel", "the speed of light", "origami", "the Silk Road", "camping", "Linux file permissions",
    "composting", "wolves", "the metric system", "podcasting", "DNA", "deserts", "learning to swim",
    "the Industrial Revolution", "cooking rice", "tides", "recycling", "the violin", "pyramids",
    "team meetings", "sharks", "memory and forgetting", "the Amazon river", "knitting", "lighthouses",
]
TASKS = [
    "Explain {} to a ten-year-old.", "Write a short poem about {}.", "Give me three interesting facts about {}.",
    "Summarize the key ideas of {} in one paragraph.", "Write a short story that involves {}.",
    "What should a beginner know about {}?", "Describe {} in simple terms.", "List five tips related to {}.",
    "Why does {} matter?", "Write a friendly email to a colleague about {}.",
    "What are common misconceptions about {}?", "Answer briefly: what is {}?",
]


def chat_prompts() -> list[str]:
    """The built-in prompt set: every task about every topic (1212 prompts)."""
    return [task.format(topic) for topic in TOPICS for task in TASKS]


@dataclass(frozen=True)
class TrainSettings:
    prompts: int = 1212  # how many of the built-in prompts to use (a seeded sample)
    held_out: int = 60  # of those, kept for measuring acceptance
    max_new_tokens: int = 160
    generate_batch: int = 32
    steps: int = 800
    batch: int = 8  # sequences per training step
    lr: float = 1e-3
    eval_every: int = 100
    seed: int = 0
    chain: int = 2  # draft steps trained in a chain: the head also learns from its own outputs


    def __post_init__(self) -> None:
        if not 0 < self.held_out < self.prompts <= len(chat_prompts()):
            raise ValueError(f"need 0 < held_out < prompts <= {len(chat_prompts())}")
        if min(self.max_new_tokens, self.generate_batch, self.steps, self.batch, self.eval_every, self.chain) <= 0:
            raise ValueError("max_new_tokens, generate_batch, steps, batch, eval_every and chain must be positive")


def prompt_sample(settings: TrainSettings) -> list[str]:
    """The seeded sample of the built-in prompts a run uses, in its order: the first `held_out` are
    held out (a prompt whose reply is under 2 tokens is dropped, which only moves the split later)."""
    texts = chat_prompts()
    random.Random(settings.seed).shuffle(texts)
    return texts[:settings.prompts]


def held_out_prompts(checkpoint: Path) -> list[str]:
    """The prompts the head beside `checkpoint` never trained on, from the settings its record holds
    (the default settings when there is no record)."""
    record = Path(checkpoint) / HEAD_RECORD
    settings = TrainSettings(**json.loads(record.read_text())["settings"]) if record.exists() else TrainSettings()
    return prompt_sample(settings)[:settings.held_out]


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


@torch.inference_mode()
def greedy_batch(model: QwenModel, prompts: list[list[int]], max_new_tokens: int, stop: int) -> list[list[int]]:
    """Greedy replies to several prompts at once: left-padded, padding hidden by a key mask (RoPE is
    relative, so a row's shifted positions change nothing). Each reply ends at its stop token, if any."""
    width = max(map(len, prompts))
    device = model.device
    ids = torch.tensor([[stop] * (width - len(p)) + p for p in prompts], device=device)
    key_mask = torch.ones(len(prompts), width + max_new_tokens, dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompts):
        key_mask[row, :width - len(prompt)] = False
    cache = model.new_cache(width + max_new_tokens, batch=len(prompts))
    logits, _ = model(ids, cache, 0, last_only=True, key_mask=key_mask)
    tokens = [logits[:, -1].argmax(-1)]
    for step in range(max_new_tokens - 1):
        if bool((torch.stack(tokens) == stop).any(0).all()):
            break
        logits, _ = model(tokens[-1][:, None], cache, width + step, key_mask=key_mask)
        tokens.append(logits[:, -1].argmax(-1))
    replies = torch.stack(tokens, dim=1).tolist()
    return [row[:row.index(stop) + 1] if stop in row else row for row in replies]


def generate_replies(model: QwenModel, stop: int, prompts: list[list[int]], settings: TrainSettings,
                     work: Path, show: Callable[[str], None]) -> list[list[int]]:
    """The trunk's greedy replies, one batch at a time, saved after each (resumable). A hybrid trunk's
    DeltaNet state would take in the padding, so it decodes one prompt at a time."""
    path = work / "replies.pt"
    replies: list[list[int]] = torch.load(path) if path.exists() else []
    batch = 1 if model.config.is_hybrid else settings.generate_batch
    started, done_before = time.perf_counter(), len(replies)
    while len(replies) < len(prompts):
        replies += greedy_batch(model, prompts[len(replies):len(replies) + batch], settings.max_new_tokens, stop)
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


def head_loss(model: QwenModel, features: list[dict], chain: int) -> tuple[torch.Tensor, list[float]]:
    """Cross-entropy of the head against the trunk's top-k targets, averaged over `chain` chained draft
    steps, and each step's top-1 agreement. Step d+1 runs the head on its own step-d outputs paired with
    the true next tokens, as `MTPDrafter.propose` chains at inference; it attends to chained pairs, not
    to the true ones as at inference, but RoPE makes its scores depend only on relative positions, so
    positions restart at 0. Training it makes the second and later drafts worth making."""
    next_ids, hidden = _inputs(features, model.device)
    losses, agreements = [], []
    for depth in range(chain):
        ids = next_ids[:, depth:]
        batch, length = ids.shape
        cache = model.new_mtp_cache(length, batch=batch)
        ctx = StepContext.build(torch.arange(length, device=model.device), length,
                                model.rotary_frequencies(model.device), model.dtype)
        hidden = model.mtp(model.embed_tokens(ids), hidden[:, :length], cache, ctx)
        where, target_ids, target_probs = _targets(features, depth, model.device)
        log_probs = F.log_softmax(F.linear(hidden[where], model.lm_head.weight).float(), dim=-1)
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
    tensors = {f"mtp.{name}": t.detach().to(torch.float16).contiguous().cpu() for name, t in head.state_dict().items()}
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
    identity = {"trunk": fingerprint, "settings": {k: v for k, v in asdict(settings).items()
                                                   if k in ("prompts", "held_out", "max_new_tokens", "seed")}}
    marker = work / "run.json"
    if marker.exists() and json.loads(marker.read_text()) != identity:
        raise ValueError(f"{work} holds a run for another trunk or prompt set; use a fresh --work directory")
    marker.write_text(json.dumps(identity))

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    texts = prompt_sample(settings)
    prompts = user_prompts(tokenizer, texts)
    model = load_model(checkpoint, device=None, dtype=torch.float32)
    replies = generate_replies(model, tokenizer.eos_token_id, prompts, settings, work, show)
    sequences = [(p + r, len(p)) for p, r in zip(prompts, replies) if len(r) >= 2]
    features = trunk_features(model, sequences, work, show)
    held_out, train = features[:settings.held_out], features[settings.held_out:]

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
                                     settings.chain)
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
    record = {
        "trained_from": {"checkpoint": str(checkpoint), "trunk_fingerprint": fingerprint,
                         "model_type": model.config.model_type},
        "settings": asdict(settings),
        "command": command,
        "sequences": {"train": len(train), "held_out": len(held_out),
                      "train_positions": sum(len(f["tokens"]) - f["reply_start"] for f in train)},
        "history": history,
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
