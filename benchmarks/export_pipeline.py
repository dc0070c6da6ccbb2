"""An exported student through transformers' `pipeline("text-generation")` — the model card's own
Usage snippet — against jaxdistill's greedy generation of the same weights, on ten validation
headlines spread over the file (label format, the run's default instruction):

    jaxdistill run jaxdistill/configs/tiny.yaml run_dir=/tmp/demo/run cache_dir=/tmp/demo/cache
    python benchmarks/export_pipeline.py /tmp/demo/run/student
"""
import re, sys
from pathlib import Path
from jaxdistill.data import Template, load_source, load_tokenizer
from jaxdistill.evaluate.classification import greedy_completions, label_requests
from jaxdistill.models import load_pretrained

student = Path(sys.argv[1])
code, = re.findall(r"## Usage\n\n```python\n(.*?)```", (student / "README.md").read_text(), re.S)
ns = {"print": lambda *a: None}
exec(code, ns)
full = load_source("finance_topic", split="validation")
val = full.subset(range(0, len(full), len(full) // 10)[:10])
tok = load_tokenizer(str(student))
template = Template(instruction="Topic of: {text}", use_chat_template=False)
config, params = load_pretrained(student)
prompts = [r.context for r in label_requests(tok, val, format="label", template=template)]
ours = greedy_completions(config, params, tok, prompts, max_new_tokens=10)
agree = 0
for text, gold, mine in zip(val.texts, val.labels, ours):
    out = ns["pipe"](ns["PROMPT"].replace("{headline}", text), add_special_tokens=False, return_full_text=False,
                     skip_special_tokens=False)[0]["generated_text"]
    completion = out.removesuffix("<eos>")
    agree += completion == mine
    print(f"{text[:60]!r:64} -> {out!r:34} parsed {ns['parse'](completion)!r:28} gold {val.label_names[gold]!r}")
print(f"pipeline completions equal to jaxdistill's greedy generation: {agree}/10")
