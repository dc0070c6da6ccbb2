"""Distillation losses: the KL family, JSD(beta), skew KL, cross-entropy, sparse teacher targets,
the blended chain-of-thought loss, and a chunked fused LM-head + loss path.

Conventions (every function here):
- Inputs are logits [..., V] in fp32 or bf16; everything is computed in fp32. Position n's logits
  predict `labels[n]` (the caller shifts), and `weights[n]` (default 1) weights position n.
- Means are over supervised tokens: sum_n w_n l_n / sum_n w_n. A position with weight 0 adds exactly
  zero to the value and the gradient; an all-masked batch gives 0, not NaN.
- Temperature tau divides both student and teacher logits: p = softmax(z / tau).
- A teacher logit of -inf is a token the teacher gives probability 0; every divergence stays finite.

Every loss is a `TokenLoss`: per-token terms (which need logits) and per-token coefficients (which
need only labels, weights and the step), with L = sum_k sum_n coef_k[n] * term_k[n], so the same
loss is evaluated on full logits (`evaluate`) or chunk by chunk from hidden states and head weights
(`fused_loss`), with gradients computed inside the chunk loop and never a [N, V] array.

    divergences.py  per-token divergences and cross-entropy, log-softmax helpers, input checks
    sparse.py       sparse teacher targets (top-k, sampled) and the sparse KL estimate
    token_loss.py   Coefficients, TokenLoss, the loss specs (DivergenceLoss, CrossEntropyLoss,
                    BlendedCoT, LossConfig), evaluate
    functions.py    forward_kl, reverse_kl, jsd, skew_kl, cross_entropy, sparse_kl, blended_cot_loss
    fused.py        the chunked fused head + loss (fused_loss, fused_reference)
"""

from jaxdistill.losses.divergences import (DIVERGENCES, LossInputError, cross_entropy_per_token,
                                           divergence_per_token)
from jaxdistill.losses.functions import (blended_cot_loss, cross_entropy, forward_kl, jsd, reverse_kl,
                                         skew_kl, sparse_kl)
from jaxdistill.losses.fused import fused_loss, fused_reference
from jaxdistill.losses.sparse import SparseTargets, sampled_targets, sparse_kl_per_token, topk_targets
from jaxdistill.losses.token_loss import (KL_SCHEDULES, LOSS_KINDS, BlendedCoT, Coefficients,
                                          CrossEntropyLoss, DivergenceLoss, LossConfig, TokenLoss,
                                          cross_entropy_loss, divergence_loss, evaluate)
from jaxdistill.parts import ANSWER, IGNORE, PROMPT, TRACE

__all__ = ["ANSWER", "DIVERGENCES", "IGNORE", "KL_SCHEDULES", "LOSS_KINDS", "PROMPT", "TRACE",
           "BlendedCoT", "Coefficients", "CrossEntropyLoss", "DivergenceLoss", "LossConfig", "LossInputError",
           "SparseTargets", "TokenLoss", "blended_cot_loss", "cross_entropy", "cross_entropy_loss",
           "cross_entropy_per_token", "divergence_loss", "divergence_per_token", "evaluate", "forward_kl",
           "fused_loss", "fused_reference", "jsd", "reverse_kl", "sampled_targets", "skew_kl", "sparse_kl",
           "sparse_kl_per_token", "topk_targets"]
