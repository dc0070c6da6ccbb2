"""Continuation log-likelihoods (prefix computed once, every choice as a cached decode) against a
direct transformers computation, over ragged contexts, continuations and choice counts."""

import numpy as np
import pytest
import torch
import transformers

from jaxdistill.evaluate.loglik import EvaluationError, Request, score
from jaxdistill.models import load_pretrained


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
