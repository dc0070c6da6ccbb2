"""Teacher-target cache: run the teacher once, store sparse targets per supervised position.

Layout of a cache directory `<root>/<key>/` (numpy .npy files, memory-mapped when read):

    ids.npy [P, k] int32, weights.npy [P, k] float32, self_term.npy [P] float32
    offsets.npy [E + 1] int64    example e owns rows offsets[e] : offsets[e + 1], one per supervised
                                 position of that example, in position order
    progress.json                rows of packed batches finished (resumable build)
    meta.json                    written last, atomically: the cache is complete

The key hashes (teacher weights fingerprint, tokenizer id, the encoded examples — tokens, parts and
format — and the target settings), so a changed teacher, tokenizer, data file, format or sampling
setting never reuses a stale cache. Sampled targets use a key per (example id, position), so the
same samples come out however examples are batched: a loss on cached targets equals the loss on
live teacher logits with the same keys.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.atomic_files import write_json
from jaxdistill.data.batching import build_rows, pack_rows
from jaxdistill.data.formats import Example, loss_weights
from jaxdistill.losses import SparseTargets, sampled_targets, topk_targets
from jaxdistill.models import ModelConfig, forward
from jaxdistill.models.transformer import Params

TARGET_METHODS = ("sample", "topk")


@dataclasses.dataclass(frozen=True)
class TargetSettings:
    method: str = "sample"     # "sample": unbiased random-sampling targets; "topk": biased top-k
    k: int = 16                # samples (with replacement) or top-k tokens per position
    temperature: float = 1.0
    proposal_temperature: float | None = None
    seed: int = 0

    def __post_init__(self):
        if self.method not in TARGET_METHODS:
            raise ValueError(f"target method {self.method!r}; valid: {', '.join(TARGET_METHODS)}")
        if self.k < 1:
            raise ValueError(f"k={self.k}: must be >= 1")


def fingerprint_params(params: Params) -> str:
    """sha256 over every parameter's path, dtype, shape and bytes."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        array = np.asarray(jax.device_get(leaf))
        h.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def fingerprint_examples(examples: list[Example], format: str) -> str:
    h = hashlib.sha256(format.encode())
    for ex in examples:
        h.update(np.int64(ex.example_id).tobytes())
        h.update(ex.tokens.astype(np.int32).tobytes())
        h.update(ex.parts.astype(np.int8).tobytes())
    return h.hexdigest()


def cache_key(teacher_fingerprint: str, tokenizer_id: str, examples_fingerprint: str,
              settings: TargetSettings, teacher_config: ModelConfig | None = None) -> str:
    config = None if teacher_config is None else {
        f.name: getattr(teacher_config, f.name) for f in dataclasses.fields(teacher_config) if f.compare}
    payload = json.dumps({"teacher": teacher_fingerprint, "teacher_config": config, "tokenizer": tokenizer_id,
                          "examples": examples_fingerprint, "targets": dataclasses.asdict(settings)},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def position_keys(seed: int, example_ids, positions):
    """One PRNG key per (example id, position): [B, T] keys."""
    base = jax.random.key(seed)
    per_example = jax.vmap(jax.vmap(jax.random.fold_in, in_axes=(None, 0)), in_axes=(None, 0))
    keys = per_example(base, jnp.maximum(example_ids, 0).astype(jnp.uint32))
    return jax.vmap(jax.vmap(jax.random.fold_in))(keys, positions.astype(jnp.uint32))


@functools.partial(jax.jit, static_argnames=("settings",))
def targets_from_logits(logits, example_ids, positions, settings: TargetSettings) -> SparseTargets:
    """Sparse targets [B, T, k] from teacher logits [B, T, V] (per-position keys when sampling)."""
    if settings.method == "topk":
        return topk_targets(logits, settings.k, temperature=settings.temperature)
    keys = position_keys(settings.seed, example_ids, positions)
    sample = lambda key, z: sampled_targets(key, z, settings.k, temperature=settings.temperature,
                                            proposal_temperature=settings.proposal_temperature)
    return jax.vmap(jax.vmap(sample))(keys, logits)


@functools.partial(jax.jit, static_argnames=("settings",))
def _targets_at(logits, flat_index, example_ids, positions, settings: TargetSettings) -> SparseTargets:
    """Targets [n, k] at the flattened positions `flat_index` of logits [B, T, V]."""
    vocab = logits.shape[-1]
    pick = lambda x: x.reshape(-1, *x.shape[2:])[flat_index][None]
    out = targets_from_logits(pick(logits).reshape(1, -1, vocab), pick(example_ids), pick(positions), settings)
    return jax.tree.map(lambda x: x[0], out)


def _supervised_positions(ex: Example, format: str) -> np.ndarray:
    """Positions t of the example whose next token is supervised."""
    return np.flatnonzero(loss_weights(ex.parts[1:], format) > 0)


class TeacherCache:
    """A complete cache directory, read through memory maps."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        load = lambda name: np.load(self.path / name, mmap_mode="r")
        self.ids, self.weights, self.self_term = load("ids.npy"), load("weights.npy"), load("self_term.npy")
        self.offsets = np.load(self.path / "offsets.npy")
        self.example_index = {int(e): i for i, e in enumerate(np.load(self.path / "example_ids.npy"))}

    def targets(self, batch: dict[str, np.ndarray]) -> SparseTargets:
        """Targets [B, T, k] for a batch from `build_rows` (zeros where not supervised)."""
        B, T = batch["tokens"].shape
        k = self.ids.shape[1]
        ids = np.zeros((B, T, k), np.int32)
        weights = np.zeros((B, T, k), np.float32)
        self_term = np.zeros((B, T), np.float32)
        supervised = batch["weights"] > 0
        for b in range(B):
            for seg in np.unique(batch["segment_ids"][b][batch["segment_ids"][b] > 0]):
                cols = np.flatnonzero((batch["segment_ids"][b] == seg) & supervised[b])
                if cols.size == 0:
                    continue
                e = self.example_index[int(batch["example_ids"][b, cols[0]])]
                rows = slice(self.offsets[e], self.offsets[e + 1])
                if self.offsets[e + 1] - self.offsets[e] != cols.size:
                    raise ValueError(f"example {batch['example_ids'][b, cols[0]]}: the batch supervises "
                                     f"{cols.size} positions, the cache holds {self.offsets[e + 1] - self.offsets[e]}"
                                     " — the batch was built with another format or data")
                ids[b, cols], weights[b, cols], self_term[b, cols] = self.ids[rows], self.weights[rows], self.self_term[rows]
        return SparseTargets(ids, weights, self_term)  # host arrays: the caller places them


def build_teacher_cache(config: ModelConfig, params: Params, examples: list[Example], root, *,
                        format: str, tokenizer_id: str, settings: TargetSettings = TargetSettings(),
                        teacher_fingerprint: str | None = None, seq_len: int = 512,
                        batch_rows: int = 8) -> TeacherCache:
    """Run the teacher over `examples` (packed rows) and store sparse targets; returns the cache.
    Reuses a complete cache with the same key, resumes an incomplete one, and writes `meta.json`
    (atomically) only when every row is done."""
    ids = [ex.example_id for ex in examples]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"example ids must be unique to key the cache; duplicated: {dupes} "
                         "(give each split its own id range when encoding)")
    fingerprint = teacher_fingerprint or fingerprint_params(params)
    key = cache_key(fingerprint, tokenizer_id, fingerprint_examples(examples, format), settings, config)
    path = Path(root) / key
    if (path / "meta.json").is_file():
        return TeacherCache(path)
    path.mkdir(parents=True, exist_ok=True)
    counts = np.array([len(_supervised_positions(ex, format)) for ex in examples], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    total = int(offsets[-1])
    shapes = {"ids.npy": ((total, settings.k), np.int32), "weights.npy": ((total, settings.k), np.float32),
              "self_term.npy": ((total,), np.float32)}
    arrays, reopened = {}, True
    for name, (shape, dtype) in shapes.items():
        arrays[name], kept = _target_array(path / name, shape, dtype)
        reopened &= kept
    np.save(path / "offsets.npy", offsets)
    np.save(path / "example_ids.npy", np.array([ex.example_id for ex in examples], np.int64))
    progress_file = path / "progress.json"
    packing = {"seq_len": seq_len, "batch_rows": batch_rows}
    progress = json.loads(progress_file.read_text()) if progress_file.is_file() else {}
    # other packing, or an array file a kill left unreadable (made anew): start over
    done = progress["rows"] if progress.get("packing") == packing and reopened else 0
    index_of = {ex.example_id: i for i, ex in enumerate(examples)}
    rows = pack_rows([len(ex) for ex in examples], seq_len)
    for start in range(done, len(rows), batch_rows):
        chunk = rows[start:start + batch_rows]
        batch = build_rows(examples, chunk, seq_len, format)
        logits = forward(config, params, jnp.asarray(batch["tokens"]),
                         segment_ids=jnp.asarray(batch["segment_ids"]))
        # Targets only at supervised positions, gathered into a power-of-two bucket (few shapes).
        flat = np.flatnonzero(batch["weights"].ravel() > 0)
        bucket = 1 << max(int(len(flat) - 1).bit_length(), 0)
        padded = np.concatenate([flat, np.zeros(bucket - len(flat), flat.dtype)])
        targets = jax.device_get(_targets_at(logits, jnp.asarray(padded), jnp.asarray(batch["example_ids"]),
                                             jnp.asarray(batch["positions"]), settings))
        where = {int(f): j for j, f in enumerate(flat)}
        for b, row in enumerate(chunk):
            for seg, i in enumerate(row, start=1):
                cols = np.flatnonzero((batch["segment_ids"][b] == seg) & (batch["weights"][b] > 0))
                rows_of = [where[b * batch["weights"].shape[1] + c] for c in cols]
                e = index_of[examples[i].example_id]
                span = slice(offsets[e], offsets[e + 1])
                arrays["ids.npy"][span] = targets.ids[rows_of]
                arrays["weights.npy"][span] = targets.weights[rows_of]
                arrays["self_term.npy"][span] = targets.self_term[rows_of]
        for array in arrays.values():
            array.flush()
        write_json(progress_file, {"rows": start + len(chunk), "packing": packing})
    write_json(path / "meta.json", {"key": key, "teacher": fingerprint, "tokenizer": tokenizer_id,
                                    "format": format, "settings": dataclasses.asdict(settings),
                                    "examples": len(examples), "positions": total, "rows": len(rows)})
    return TeacherCache(path)


def _target_array(file: Path, shape, dtype) -> tuple[np.memmap, bool]:
    """(the memory-mapped array file, whether an existing one was kept). A file a kill left unreadable
    or of another shape is made anew; a new file's blocks are reserved up front, so a full disk is an
    `OSError` (ENOSPC) here and not a SIGBUS while the targets are written."""
    if file.is_file():
        try:
            array = np.lib.format.open_memmap(file, mode="r+")
            if array.shape == tuple(shape) and array.dtype == np.dtype(dtype):
                return array, True
        except (ValueError, OSError, EOFError):
            pass
    array = np.lib.format.open_memmap(file, mode="w+", dtype=dtype, shape=shape)
    with open(file, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
    return array, False
