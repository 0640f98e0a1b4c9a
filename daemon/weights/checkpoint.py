"""Finding a checkpoint on disk and reading named tensors from its safetensors files.

A checkpoint is a local directory, or a Hugging Face repo id looked up offline in the local HF cache
(these machines may have no network). Tensors are read one by name through safetensors' memory map,
so tensors we do not need (the vision tower) are never read. Errors name the tensor and the file.
An MTP head trained by `mtpchat train-head` for a checkpoint that shipped without one lies beside it
as `mtp_head.safetensors`; its `mtp.*` tensors join the checkpoint's (and win over any it has).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

INDEX_FILE = "model.safetensors.index.json"
HEAD_FILE = "mtp_head.safetensors"


class CheckpointError(Exception):
    """A checkpoint that cannot be found or read; the message says what to do."""


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
        self._handles: dict[str, object] = {}
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
                self._handles[filename] = safe_open(path, framework="pt", device="cpu")
            except (FileNotFoundError, SafetensorError, OSError) as exc:
                raise CheckpointError(f"cannot read {path}: {exc}; re-download the checkpoint") from None
        return self._handles[filename]

    def read(self, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """The tensor `name`, checked against the expected `shape` when one is given."""
        filename = self.weight_map.get(name)
        if filename is None:
            raise CheckpointError(f"tensor {name!r} is missing from {self.directory} (looked in {self.source})")
        try:
            tensor = self._open(filename).get_tensor(name)
        except SafetensorError as exc:
            raise CheckpointError(f"tensor {name!r} in {self.directory / filename} cannot be read: {exc}") from None
        if shape is not None and tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(
                f"tensor {name!r} in {self.directory / filename} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(shape)}"
            )
        return tensor
