"""Where a model's parts live: one device when it fits, its layers split across GPUs when not.

A model is a sequence of parts — embedding, decoder layers in order, head (final norm, lm_head and
the MTP head) — each with a known size: its weights in the chosen dtype plus, for layers, the cache
of one `context`-token stream. `plan_placement` decides before any weight is read, from device
budgets (free memory, less a headroom for activations, or a user's `max_memory`):

- a device the user named must hold the whole model; a list of devices is split across, in order;
- otherwise, with GPUs, the GPU with the most room takes the whole model (so two models that fit
  land on two GPUs); when none can, the layers are split over the fewest GPUs, in index order,
  each filled before the next (activations cross a card boundary once per segment);
- without a GPU, the CPU.

A model that fits nowhere gets a `PlacementError` saying how much memory is missing. The plan is
pure arithmetic over declared capacities, so it is tested on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtpchat.config import format_size

GPU_HEADROOM = 0.9  # share of a GPU's free memory a plan may use; the rest is left for activations


class PlacementError(RuntimeError):
    pass


@dataclass(frozen=True)
class DeviceBudget:
    name: str  # "cpu", "cuda:0", ...
    free: int  # bytes a plan may use on it


@dataclass(frozen=True)
class Footprint:
    """Bytes of each part of a model, in load order."""
    embed: int
    layers: tuple[int, ...]
    head: int

    @property
    def total(self) -> int:
        return self.embed + sum(self.layers) + self.head


@dataclass(frozen=True)
class Placement:
    embed_device: str
    layer_devices: tuple[str, ...]
    head_device: str
    bytes_by_device: dict[str, int]

    @classmethod
    def single(cls, device: str, footprint: Footprint) -> Placement:
        return cls(device, (device,) * len(footprint.layers), device, {device: footprint.total})

    @property
    def devices(self) -> list[str]:
        return list(self.bytes_by_device)

    def describe(self) -> list[dict]:
        """Per device: which layers (first..last, inclusive), whether it holds embedding/head, bytes."""
        rows = []
        for device, nbytes in self.bytes_by_device.items():
            layers = [i for i, d in enumerate(self.layer_devices) if d == device]
            rows.append({"device": device, "layers": [layers[0], layers[-1]] if layers else [],
                         "embedding": device == self.embed_device, "head": device == self.head_device,
                         "bytes": nbytes})
        return rows


def _fill(footprint: Footprint, budgets: list[DeviceBudget]) -> Placement | None:
    """Parts in order onto devices in order, each device filled before the next; None if they run out."""
    parts = [footprint.embed, *footprint.layers, footprint.head]
    owners: list[str] = []
    used: dict[str, int] = {}
    device_index = 0
    for size in parts:
        while (device_index < len(budgets)
               and used.get(budgets[device_index].name, 0) + size > budgets[device_index].free):
            device_index += 1
        if device_index == len(budgets):
            return None
        name = budgets[device_index].name
        used[name] = used.get(name, 0) + size
        owners.append(name)
    return Placement(owners[0], tuple(owners[1:-1]), owners[-1], used)


def _missing(model: str, footprint: Footprint, budgets: list[DeviceBudget]) -> PlacementError:
    free = sum(b.free for b in budgets)
    where = ", ".join(f"{b.name} {format_size(b.free)}" for b in budgets) or "no device"
    missing = footprint.total - free
    shortfall = f"{format_size(missing)} missing" if missing > 0 else "not in whole layers per device"
    return PlacementError(
        f"model {model!r} needs {format_size(footprint.total)} but only {where} can be used: {shortfall} "
        "(unload another model, choose a smaller dtype, lower `context`, or raise `max_memory`)")


def plan_placement(model: str, footprint: Footprint, budgets: list[DeviceBudget],
                   requested: tuple[str, ...] = ()) -> Placement:
    """Where `model` goes, given what each device may still take; raises PlacementError."""
    by_name = {b.name: b for b in budgets}
    unknown = [name for name in requested if name not in by_name]
    if unknown:
        raise PlacementError(f"model {model!r} asks for device {', '.join(unknown)}, which this machine does not "
                             f"have (devices: {', '.join(by_name) or 'none'})")
    if requested:
        chosen = [by_name[name] for name in requested]
        plan = _fill(footprint, chosen)
        if plan is None:
            raise _missing(model, footprint, chosen)
        return plan
    gpus = [b for b in budgets if b.name != "cpu"]
    if not gpus:
        chosen = [b for b in budgets if b.name == "cpu"]
        if chosen and footprint.total <= chosen[0].free:
            return Placement.single("cpu", footprint)
        raise _missing(model, footprint, chosen)
    roomiest = max(gpus, key=lambda b: b.free)
    if footprint.total <= roomiest.free:
        return Placement.single(roomiest.name, footprint)
    for count in range(2, len(gpus) + 1):  # the fewest GPUs whose room adds up, then in index order
        chosen = sorted(sorted(gpus, key=lambda b: -b.free)[:count], key=lambda b: gpus.index(b))
        plan = _fill(footprint, chosen)
        if plan is not None:
            return plan
    raise _missing(model, footprint, gpus)
