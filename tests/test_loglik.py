"""Continuation log-likelihoods (prefix computed once, every choice as a cached decode) against a
direct transformers computation, over ragged contexts, continuations and choice counts."""

import numpy as np
import pytest
import torch
import transformers

from jaxdistill.evaluate.loglik import EvaluationError, Request, score
from jaxdistill.models import load_pretrained, make_mesh


@pytest.mark.parametrize("family", ["llama3", "qwen3"])
def test_scores_equal_transformers(family, checkpoints):
    config, params = load_pretrained(checkpoints[family])
    rng = np.random.default_rng(0)
    ids = lambda n: tuple(int(t) for t in rng.integers(3, 97, n))
    requests = [Request(ids(rng.integers(1, 70)), tuple(ids(rng.integers(1, 20)) for _ in range(rng.integers(1, 5))))
                for _ in range(9)]
    out = score(config, params, requests, batch_size=4)
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoints[family], dtype=torch.float32).eval()
    for request, scores in zip(requests, out):
        assert len(scores.logprobs) == len(request.continuations)
        for continuation, log_p, greedy in zip(request.continuations, scores.logprobs, scores.greedy):
            with torch.no_grad():
                logits = model(torch.tensor([request.context + continuation])).logits[0].double()
            log_softmax = torch.log_softmax(logits, -1)[len(request.context) - 1:-1]
            picked = log_softmax[torch.arange(len(continuation)), torch.tensor(continuation)]
            assert log_p == pytest.approx(float(picked.sum()), abs=1e-4)
            assert greedy == bool((log_softmax.argmax(-1) == torch.tensor(continuation)).all())


def test_bad_requests(checkpoints):
    config, params = load_pretrained(checkpoints["llama3"])
    with pytest.raises(EvaluationError, match="non-empty context and non-empty continuations"):
        Request((1, 2), ((3,), ()))
    with pytest.raises(EvaluationError, match="token id 500 is outside the model's vocabulary \\(97\\)"):
        score(config, params, [Request((1, 500), ((3,),))])


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 4, 1)])
def test_scores_sharded_over_the_batch_axes_equal_one_device(mesh_shape, checkpoints):
    """Batches sharded over (data, fsdp) — with the weights sharded by the rules too — give the
    single-device scores (batch_size 4 is rounded up to the 8 batch shards)."""
    config, params = load_pretrained(checkpoints["qwen3"])
    mesh = make_mesh(mesh_shape)
    _, sharded = load_pretrained(checkpoints["qwen3"], mesh=mesh)
    rng = np.random.default_rng(1)
    ids = lambda n: tuple(int(t) for t in rng.integers(3, 97, n))
    requests = [Request(ids(rng.integers(1, 40)), tuple(ids(rng.integers(1, 9)) for _ in range(3))) for _ in range(11)]
    single = score(config, params, requests, batch_size=4)
    spmd = score(config, sharded, requests, batch_size=4, mesh=mesh)
    for a, b in zip(single, spmd):
        np.testing.assert_allclose(b.logprobs, a.logprobs, rtol=0, atol=1e-4)  # summation-order noise only
        np.testing.assert_array_equal(b.greedy, a.greedy)
