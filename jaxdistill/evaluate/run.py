"""Which suites run, on what, and the table they make.

    in_domain              constrained scoring of every label after the prompt (classification.py)
    in_domain_generate     greedy trace + answer, parsed (classification.py)
    perplexity_in_domain   token-weighted LM loss on the held-out texts (perplexity.py)
    perplexity_general     the same on general text (perplexity.py)
    gsm8k                  exact match of the final number, k-shot chain of thought (gsm8k.py)
    mmlu, arc_easy, ...    general-knowledge multiple choice, lm-evaluation-harness rules (multiple_choice.py)

Every suite returns one result dict: {"suite", "n", "metrics": {name: value}, "stderr": {name:
value}, "chance", "seconds", "examples_per_s", ...}; the first metric is the suite's headline.
"""

from __future__ import annotations

import dataclasses
import math

from jaxdistill.data import ClassificationData, Template, stratified_subsample
from jaxdistill.evaluate.classification import evaluate_classification
from jaxdistill.evaluate.gsm8k import evaluate_gsm8k
from jaxdistill.evaluate.loglik import EvaluationError
from jaxdistill.evaluate.multiple_choice import SUITES, evaluate_suite
from jaxdistill.evaluate.perplexity import general_texts, perplexity
from jaxdistill.models import ModelConfig
from jaxdistill.models.transformer import Params

IN_DOMAIN = ("in_domain", "in_domain_generate", "perplexity_in_domain")
OWN = IN_DOMAIN + ("perplexity_general", "gsm8k")


def available_suites() -> tuple[str, ...]:
    return OWN + tuple(SUITES)


def check_suites(names) -> None:
    unknown = [n for n in names if n not in available_suites()]
    if unknown:
        raise EvaluationError(f"unknown eval suite(s) {unknown}; available: {', '.join(available_suites())}")


def default_suites(general_knowledge: bool) -> tuple[str, ...]:
    """In-domain suites always; the general ones only for a teacher that has general knowledge to lose
    (a pretrained checkpoint, not one trained here from scratch on the task)."""
    base = ("in_domain", "perplexity_in_domain", "perplexity_general")
    return base + (tuple(SUITES) if general_knowledge else ())


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    suites: tuple[str, ...] | None = None  # null: default_suites (general ones only for a pretrained teacher)
    limit: int | None = 200            # examples per suite (null: all)
    held_out: float = 0.1              # fraction of the data held out for in-domain evaluation (stratified)
    batch_size: int = 8
    max_new_tokens: int = 64           # in_domain_generate: trace + answer budget
    pruned_only: bool = True           # also evaluate the pruned-only baseline (one-shot, no distillation)

    def __post_init__(self):
        if self.suites is not None:
            check_suites(self.suites)
        if self.limit is not None and self.limit < 1:
            raise EvaluationError(f"eval.limit={self.limit}: must be >= 1, or null for all")
        if not 0.0 < self.held_out < 1.0:
            raise EvaluationError(f"eval.held_out={self.held_out}: must be in (0, 1)")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise EvaluationError(f"eval.batch_size={self.batch_size}, eval.max_new_tokens={self.max_new_tokens}: "
                                  "both must be >= 1")


def run_suites(config: ModelConfig, params: Params, tokenizer, suites, *, eval_config: EvalConfig,
               held_out: ClassificationData | None = None, format: str = "label",
               template: Template = Template(), mesh=None, log=None) -> dict[str, dict]:
    """{suite: result} for one model. The in-domain suites need `held_out` (and its format/template).
    `mesh`: the scoring suites shard their batches over its batch axes (generation runs unsharded)."""
    check_suites(suites)
    e = eval_config
    if held_out is None and any(s in IN_DOMAIN for s in suites):
        raise EvaluationError(f"suites {[s for s in suites if s in IN_DOMAIN]} need held-out in-domain data")
    common = {"limit": e.limit, "batch_size": e.batch_size}
    out = {}
    for suite in suites:
        if suite in ("in_domain", "in_domain_generate"):
            out[suite] = evaluate_classification(
                config, params, tokenizer, held_out, format=format, template=template,
                method="score" if suite == "in_domain" else "generate", max_new_tokens=e.max_new_tokens,
                mesh=mesh, **common)
        elif suite == "perplexity_in_domain":  # a stratified sample: sources are often sorted by class
            texts = held_out.subset(stratified_subsample(held_out.labels, e.limit, seed=0)).texts \
                if e.limit and e.limit < len(held_out) else held_out.texts
            out[suite] = perplexity(config, params, tokenizer, texts, batch_size=e.batch_size, mesh=mesh)
        elif suite == "perplexity_general":
            out[suite] = perplexity(config, params, tokenizer, general_texts(e.limit), batch_size=e.batch_size,
                                    mesh=mesh)
        elif suite == "gsm8k":
            out[suite] = evaluate_gsm8k(config, params, tokenizer, **common)
        else:
            out[suite] = evaluate_suite(suite, config, params, tokenizer, mesh=mesh, **common)
        out[suite]["suite"] = suite
        if log is not None:
            log(f"  {suite}: {headline(out[suite])} ({out[suite]['examples_per_s']:.1f} examples/s)")
    return out


def headline(result: dict) -> str:
    """'name value ± stderr' of a result's first metric."""
    name, value = next(iter(result["metrics"].items()))
    err = result.get("stderr", {}).get(name)
    return f"{name} {value:.4f}" + ("" if err is None or not math.isfinite(err) else f" ± {err:.4f}")


def summary_table(results: dict[str, dict[str, dict]]) -> str:
    """One row per suite (its headline metric), one column per model: {model: {suite: result}}."""
    models = list(results)
    suites = list(dict.fromkeys(s for per_model in results.values() for s in per_model))
    width = max([len("suite")] + [len(s) for s in suites])
    cells = {m: {s: headline(results[m][s]) if s in results[m] else "-" for s in suites} for m in models}
    col = {m: max([len(m)] + [len(c) for c in cells[m].values()]) for m in models}
    lines = [f"{'suite':<{width}}  " + "  ".join(f"{m:>{col[m]}}" for m in models)]
    for s in suites:
        lines.append(f"{s:<{width}}  " + "  ".join(f"{cells[m][s]:>{col[m]}}" for m in models))
    return "\n".join(lines)
