"""Data: classification sources, supervision formats, batching/packing, traces, teacher-target cache."""

from jaxdistill.data.batching import BatchingError, BatchIterator, build_rows, pack_rows, packing_efficiency
from jaxdistill.data.formats import FORMATS, Example, Template, encode_dataset, encode_example, parse_answer
from jaxdistill.data.sources import (ClassificationData, DataError, load_source, stratified_split,
                                     stratified_subsample)
from jaxdistill.data.teacher_cache import TargetSettings, TeacherCache, build_teacher_cache
from jaxdistill.data.tokenizer import load_tokenizer, train_bpe
from jaxdistill.data.rationales import (RATIONALE_PROMPT, clean_rationale, generate_rationales, rationale_prompt,
                                        rationale_stop_tokens, trace_quality)
from jaxdistill.data.traces import attach_traces, completion_text, generate_traces, load_traces

__all__ = ["FORMATS", "RATIONALE_PROMPT", "BatchIterator", "BatchingError", "ClassificationData", "DataError",
           "Example", "TargetSettings", "TeacherCache", "Template", "attach_traces", "build_rows",
           "build_teacher_cache", "clean_rationale", "completion_text", "encode_dataset", "encode_example",
           "generate_rationales", "generate_traces", "load_source", "load_tokenizer", "load_traces", "pack_rows",
           "packing_efficiency", "parse_answer", "rationale_prompt", "rationale_stop_tokens", "stratified_split",
           "stratified_subsample", "trace_quality", "train_bpe"]
