"""Batches: packing several examples per row (segment ids) or one per row with length buckets, a
deterministic order from a seed, an iterator whose state checkpoints and restores exactly, and
host-sharded reading (each process builds only its own rows of every global batch).

A batch is a dict of [rows, seq_len] arrays:

    tokens        input token ids (0 where padding)
    segment_ids   1, 2, ... per packed example; 0 = padding (attention never crosses segments and
                  RoPE positions restart per segment)
    labels        the next token within the same example, -1 elsewhere
    parts         the part (PROMPT / TRACE / ANSWER) of that next token, 0 elsewhere
    weights       loss weight of that next token under the supervision format
    example_ids   the example each position belongs to (-1 = padding)
    positions     the position of each token inside its example
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxdistill.data.formats import Example, loss_weights

MODES = ("pack", "pad")


class BatchingError(ValueError):
    """A batching configuration that cannot hold the examples."""


def pack_rows(lengths, seq_len: int, window: int = 64) -> list[list[int]]:
    """First-fit packing of examples (in the given order) into rows of `seq_len` tokens, looking
    back over the last `window` rows (so the cost is linear in the number of examples)."""
    rows: list[list[int]] = []
    space: list[int] = []
    for i, n in enumerate(lengths):
        if n > seq_len:
            raise BatchingError(f"entry {i} has {n} tokens, more than seq_len={seq_len}")
        for r in range(max(0, len(rows) - window), len(rows)):
            if n <= space[r]:
                rows[r].append(i)
                space[r] -= n
                break
        else:
            rows.append([i])
            space.append(seq_len - n)
    return rows


def build_rows(examples: list[Example], rows: list[list[int]], seq_len: int, format: str,
               pad_id: int = 0) -> dict[str, np.ndarray]:
    """The batch arrays (see the module docstring) for rows of example indices."""
    shape = (len(rows), seq_len)
    out = {"tokens": np.full(shape, pad_id, np.int32), "segment_ids": np.zeros(shape, np.int32),
           "labels": np.full(shape, -1, np.int32), "parts": np.zeros(shape, np.int8),
           "weights": np.zeros(shape, np.float32), "example_ids": np.full(shape, -1, np.int64),
           "positions": np.zeros(shape, np.int32)}
    for r, row in enumerate(rows):
        start = 0
        for s, i in enumerate(row, start=1):
            ex = examples[i]
            n = len(ex)
            span = slice(start, start + n)
            out["tokens"][r, span] = ex.tokens
            out["segment_ids"][r, span] = s
            out["example_ids"][r, span] = ex.example_id
            out["positions"][r, span] = np.arange(n)
            nxt = slice(start, start + n - 1)  # position t predicts token t + 1 of the same example
            out["labels"][r, nxt] = ex.tokens[1:]
            out["parts"][r, nxt] = ex.parts[1:]
            out["weights"][r, nxt] = loss_weights(ex.parts[1:], format)
            start += n
    return out


@dataclasses.dataclass
class BatchIterator:
    """Endless deterministic batches of `batch_size` rows (global), this process's slice only.

    Epoch e uses the permutation of examples drawn from (seed, e); in "pack" mode they are packed
    into rows, in "pad" mode each example is a row and rows of similar length are batched together
    (sorted within windows of `bucket_window` batches) with the row length rounded up to a bucket
    from `buckets`. `state()` / `restore()` checkpoint the position exactly.
    """

    examples: list[Example]
    batch_size: int
    seq_len: int
    format: str = "label"
    mode: str = "pack"
    seed: int = 0
    buckets: tuple[int, ...] | None = None
    bucket_window: int = 16
    process_index: int = 0
    process_count: int = 1
    pad_id: int = 0
    epoch: int = 0
    batch: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise BatchingError(f"mode={self.mode!r}; valid: {', '.join(MODES)}")
        if self.batch_size % self.process_count:
            raise BatchingError(f"batch_size={self.batch_size} is not divisible by process_count="
                                f"{self.process_count}: every process needs the same number of rows")
        if not self.examples:
            raise BatchingError("no examples to batch")
        too_long = [ex.example_id for ex in self.examples if len(ex) > self.seq_len]
        if too_long:
            raise BatchingError(f"{len(too_long)} example(s) longer than seq_len={self.seq_len} (ids "
                                f"{too_long[:5]}): encode with max_len <= seq_len")
        self._epoch_rows: tuple[int, list[list[int]]] | None = None

    def _rows(self, epoch: int) -> list[list[int]]:
        if self._epoch_rows is None or self._epoch_rows[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
            if self.mode == "pack":
                rows = [[int(order[i]) for i in row]
                        for row in pack_rows([len(self.examples[i]) for i in order], self.seq_len)]
            else:
                rows = [[int(i)] for i in order]
                window = self.batch_size * self.bucket_window
                rows = [row for start in range(0, len(rows), window)
                        for row in sorted(rows[start:start + window], key=lambda r: len(self.examples[r[0]]))]
                # batches of similar lengths, in a seeded order (not short-to-long)
                batches = [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
                shuffle = np.random.default_rng([self.seed, epoch, 1]).permutation(len(batches))
                rows = [row for b in shuffle for row in batches[b]]
            self._epoch_rows = (epoch, rows)
        return self._epoch_rows[1]

    def batches_per_epoch(self) -> int:
        n = len(self._rows(self.epoch)) // self.batch_size
        if n == 0:
            raise BatchingError(f"an epoch has fewer rows ({len(self._rows(self.epoch))}) than batch_size="
                                f"{self.batch_size}")
        return n

    def _row_length(self, rows: list[list[int]]) -> int:
        if self.mode == "pack" or not self.buckets:
            return self.seq_len
        longest = max(len(self.examples[r[0]]) for r in rows)
        fitting = [b for b in sorted(self.buckets) if b >= longest]
        return fitting[0] if fitting else self.seq_len

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.batch >= self.batches_per_epoch():
            self.epoch, self.batch = self.epoch + 1, 0
        rows = self._rows(self.epoch)[self.batch * self.batch_size:(self.batch + 1) * self.batch_size]
        per_process = self.batch_size // self.process_count
        mine = rows[self.process_index * per_process:(self.process_index + 1) * per_process]
        out = build_rows(self.examples, mine, self._row_length(rows), self.format, self.pad_id)
        self.batch += 1
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed}

    def restore(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise BatchingError(f"iterator state was saved with seed {state['seed']}, this one has {self.seed}")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


def packing_efficiency(batches) -> float:
    """Real tokens / all token slots over the given batches."""
    real = sum(int((b["segment_ids"] > 0).sum()) for b in batches)
    total = sum(b["segment_ids"].size for b in batches)
    return real / total
