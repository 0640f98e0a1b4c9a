"""The daemon's status in words, for people: shared by `mtpchat daemon status`, `mtpchat models` and
the TUI (top bar, model switcher, stats panel), so all of them word a model's state, a placement or
the conversation state cache the same way."""

from __future__ import annotations

from mtpchat.config import format_size


def model_state(model: dict) -> str:
    """A model's state as people read it: resident, unloaded, failed, or "loading 42%"."""
    state = model.get("state", "?")
    return f"loading {model.get('progress', 0):.0%}" if state == "loading" else state


def placement_line(part: dict) -> str:
    """One device of a model's placement, e.g. "cuda:1  layers 32-63 + head  25.3 GiB"."""
    held = [f"layers {part['layers'][0]}-{part['layers'][1]}"] if part["layers"] else []
    held += [name for name in ("embedding", "head") if part[name]]
    return f"{part['device']:<8} {' + '.join(held):<32} {format_size(part['bytes'])}"


def state_cache_line(cache: dict) -> str:
    """e.g. "12 states, 30 hits, 4 misses; cpu 1.2 GiB of 4 GiB" (devices without states show the default budget)."""
    uses = [f"{d['device']} {format_size(d['used'])} of {format_size(d['budget'])}" for d in cache["devices"]]
    return (f"{cache['states']} states, {cache['hits']} hits, {cache['misses']} misses; "
            + (", ".join(uses) if uses else f"{format_size(cache['budget_per_device'])} per device"))
