"""The safetensors files of a Hugging Face model directory, read safely: which file holds which
tensor (the index, else the headers), every file opened as safetensors only (a JSON header and raw
tensor bytes — never pickle, which can run code), and a reader of single tensors on demand
(memory-mapped). `models.hf` builds the model's parameters on top of it.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open


class CheckpointError(ValueError):
    """A checkpoint directory that does not hold what its config.json describes."""


def checkpoint_files(path: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, from the index when there is one, else from the headers."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: path / file for name, file in weight_map.items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
        hint = (f"; {', '.join(pickled)} {'is' if len(pickled) == 1 else 'are'} never loaded: pickle files can run "
                "code. Convert to safetensors (transformers: save_pretrained(..., safe_serialization=True))"
                if pickled else "")
        raise CheckpointError(f"{path}: no *.safetensors files (and no model.safetensors.index.json){hint}")
    names = {}
    for file in files:
        with _opened(file) as f:
            names.update({name: file for name in f.keys()})
    return names


@contextlib.contextmanager
def _opened(file: Path):
    """safe_open, with a file that is not a complete safetensors file as a `CheckpointError` (safetensors
    reads only its JSON header and raw tensor bytes: never code)."""
    try:
        handle = safe_open(file, framework="numpy")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{file}: not a complete safetensors file ({err}); re-download or re-export it") from err
    with handle as f:
        yield f


class Reader:
    """Open safetensors handles, one per file, reading single tensors on demand (memory-mapped)."""

    def __init__(self, files: dict[str, Path], stack: contextlib.ExitStack):
        self.files = files
        self.handles = {file: stack.enter_context(_opened(file)) for file in sorted(set(files.values()))}

    def _resolve(self, name):
        """The stored name: as given, or without the `model.` prefix (a base-model checkpoint)."""
        if name not in self.files and name.startswith("model."):
            return name.removeprefix("model.")
        return name

    def __contains__(self, name):
        return self._resolve(name) in self.files

    def _slice(self, name):
        name = self._resolve(name)
        return self.handles[self.files[name]].get_slice(name)

    def shape(self, name) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def dtype(self, name) -> str:
        return self._slice(name).get_dtype()

    def read(self, name) -> np.ndarray:
        name = self._resolve(name)
        return self.handles[self.files[name]].get_tensor(name)
