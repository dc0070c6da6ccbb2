"""Evaluation: in-domain classification (constrained scoring and generation), general-knowledge
multiple choice (lm-evaluation-harness conventions), GSM8K, perplexity — all on one scorer that
computes a prompt once and every continuation as a cached decode (`loglik.score`)."""

from jaxdistill.evaluate.classification import classification_metrics, evaluate_classification
from jaxdistill.evaluate.gsm8k import evaluate_gsm8k, parse_final_number
from jaxdistill.evaluate.loglik import EvaluationError, Request, Scores, score
from jaxdistill.evaluate.multiple_choice import SUITES, evaluate_suite
from jaxdistill.evaluate.perplexity import perplexity
from jaxdistill.evaluate.run import EvalConfig, available_suites, default_suites, run_suites, summary_table

__all__ = ["SUITES", "EvalConfig", "EvaluationError", "Request", "Scores", "available_suites", "classification_metrics",
           "default_suites", "evaluate_classification", "evaluate_gsm8k", "evaluate_suite", "parse_final_number",
           "perplexity", "run_suites", "score", "summary_table"]
