"""Max |logit difference| against transformers (PyTorch, CPU, fp32) per family, on the tiny random
checkpoints the tests use; prints one JSON line. Needs the test extra (torch).

    python benchmarks/parity.py
"""

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.tiny_models

import jax.numpy as jnp
import numpy as np

from jaxdistill.models import forward, load_pretrained  # noqa: E402
from tests.tiny_models import FAMILIES, hf_logits, make_hf_checkpoint, pack_batch, pad_batch, random_sequences  # noqa: E402


def main():
    seqs = random_sequences([7, 12, 3, 9])
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in FAMILIES:
            path = make_hf_checkpoint(name, Path(tmp) / name)
            ref = hf_logits(path, seqs)
            config, params = load_pretrained(path)
            tokens, segments = pad_batch(seqs, 12)
            padded = np.asarray(forward(config, params, jnp.asarray(tokens), segment_ids=jnp.asarray(segments)))
            padded_err = max(np.abs(padded[i, :len(s)] - ref[i]).max() for i, s in enumerate(seqs))
            tokens, segments = pack_batch([[seqs[0], seqs[2]], [seqs[1]], [seqs[3]]], 12)
            packed = np.asarray(forward(config, params, jnp.asarray(tokens), segment_ids=jnp.asarray(segments)))
            packed_err = max(np.abs(packed[0, :7] - ref[0]).max(), np.abs(packed[0, 7:10] - ref[2]).max(),
                             np.abs(packed[1] - ref[1]).max(), np.abs(packed[2, :9] - ref[3]).max())
            result[name] = {"padded_max_abs": float(padded_err), "packed_max_abs": float(packed_err),
                            "logit_scale": float(max(np.abs(r).max() for r in ref))}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
