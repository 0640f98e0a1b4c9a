"""Finding a checkpoint on disk and reading named tensors from its safetensors files.

A checkpoint is a local directory, or a Hugging Face repo id looked up offline in the local HF cache
(these machines may have no network). Tensors are read one by name, so tensors we do not need (the
vision tower) are never read. Errors name the tensor and the file.

Each tensor is read with a plain file read into memory of its own, not taken as a view of a memory map
(safetensors' `safe_open`): a mapped shard keeps every page the load touched in the process's RSS until
it is closed — the whole checkpoint by the end of a load (4.89 GiB of 27B-shaped layers measured in
scripts/load_peak_rss.py) — while a read tensor is freed as soon as the loader has placed it, so the
peak is the model plus the tensor in hand. The format is the one safetensors writes: an 8-byte
little-endian header length, a JSON header of name -> {dtype, shape, data_offsets} (offsets relative to
the end of the header), then the data.

An MTP head trained by `mtpchat train-head` for a checkpoint that shipped without one lies beside it
as `mtp_head.safetensors`; its `mtp.*` tensors join the checkpoint's (and win over any it has).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

INDEX_FILE = "model.safetensors.index.json"
HEAD_FILE = "mtp_head.safetensors"


class CheckpointError(Exception):
    """A checkpoint that cannot be found or read; the message says what to do."""


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on the JSON header


class SafetensorsFile:
    """One .safetensors file: its header parsed once, each tensor read on request into its own memory."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as file:
            size = int.from_bytes(file.read(8), "little")
            if not 0 < size <= MAX_HEADER_BYTES:
                raise ValueError(f"header length {size} is not a safetensors header")
            header = json.loads(file.read(size))
        if not isinstance(header, dict):
            raise ValueError("the safetensors header is not a table of tensors")
        header.pop("__metadata__", None)
        self.data_start = 8 + size
        self.entries: dict[str, dict] = header

    def keys(self) -> list[str]:
        return list(self.entries)

    def get_tensor(self, name: str) -> torch.Tensor:
        entry = self.entries[name]
        dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(f"dtype {entry['dtype']!r} is not one mtpchatd reads")
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"{end - begin} bytes stored for shape {shape} of {entry['dtype']}")
        if begin == end:
            return torch.empty(shape, dtype=dtype)
        data = bytearray(end - begin)
        with open(self.path, "rb", buffering=0) as file:
            file.seek(self.data_start + begin)
            if file.readinto(data) != len(data):
                raise ValueError("the file ends inside the tensor's data (truncated download?)")
        return torch.frombuffer(data, dtype=dtype).reshape(shape)


REPO_ID = re.compile(r"[A-Za-z0-9_][\w.-]*/[A-Za-z0-9_][\w.-]*")


def _looks_like_repo_id(name: str) -> bool:
    return REPO_ID.fullmatch(name) is not None


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if _looks_like_repo_id(name) and not path.exists():
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(name, local_files_only=True))
        except LocalEntryNotFoundError:
            raise CheckpointError(
                f"{name!r} is not a local directory and is not in the Hugging Face cache "
                f"({constants.HF_HUB_CACHE}); download it there with `hf download {name}`, "
                "or pass the checkpoint directory"
            ) from None
    raise CheckpointError(f"checkpoint {name!r} not found: expected a directory with config.json and "
                          "*.safetensors, or a Hugging Face repo id such as Qwen/Qwen3.6-27B")


class CheckpointFiles:
    """Tensor name -> file map of a checkpoint, from its index or the safetensors headers."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._handles: dict[str, SafetensorsFile] = {}
        index = directory / INDEX_FILE
        if index.exists():
            try:
                self.weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise CheckpointError(f"{index} is malformed ({exc!r}); re-download the checkpoint") from None
            self.source = INDEX_FILE
        else:
            files = sorted(f for f in directory.glob("*.safetensors") if f.name != HEAD_FILE)
            if not files:
                raise CheckpointError(f"{directory} has no *.safetensors files")
            self.weight_map = {name: f.name for f in files for name in self._open(f.name).keys()}
            self.source = ", ".join(f.name for f in files)
        if (directory / HEAD_FILE).exists():
            self.weight_map.update(dict.fromkeys(self._open(HEAD_FILE).keys(), HEAD_FILE))
            self.source += f" and {HEAD_FILE}"

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def names(self) -> list[str]:
        return list(self.weight_map)

    def _open(self, filename: str):
        if filename not in self._handles:
            path = self.directory / filename
            try:
                self._handles[filename] = SafetensorsFile(path)
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"cannot read {path}: {exc}; re-download the checkpoint") from None
        return self._handles[filename]

    def read(self, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """The tensor `name`, checked against the expected `shape` when one is given."""
        filename = self.weight_map.get(name)
        if filename is None:
            raise CheckpointError(f"tensor {name!r} is missing from {self.directory} (looked in {self.source})")
        try:
            tensor = self._open(filename).get_tensor(name)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"tensor {name!r} in {self.directory / filename} cannot be read: {exc}") from None
        if shape is not None and tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(
                f"tensor {name!r} in {self.directory / filename} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(shape)}"
            )
        return tensor
