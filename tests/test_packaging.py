"""The wheel carries the shipped data (`data/` -> `jaxdistill/_data/`), and an installed copy reads it.

The wheel is built once per module from a copy of the sources in a temporary folder (building in the
checkout would write `build/` there, whose stale files setuptools puts into later wheels), then
unpacked and imported in subprocesses whose working directory is outside the repository, with
$JAXDISTILL_DATA unset and the repository root not on sys.path: what a `pip install` user sees.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What a wheel build reads: pyproject's readme and packages, the package, the data package's folder.
SOURCES = ["pyproject.toml", "README.md", "MANIFEST.in", "setup.cfg", "setup.py", "jaxdistill", "data"]
# The data the default job (and the tiny config) reads, and the licences that must travel with it.
NEEDED = ["finance_topic/train.parquet", "finance_topic/validation.parquet", "finance_topic/classes.txt",
          "finance_topic/bpe-4096.json", "finance_topic/rationales-smollm2-320.jsonl",
          "general_mc/mc_suites/arc_easy.jsonl", "general_mc/mc_suites/piqa.jsonl",
          "tokenizers/qwen2/vocab.json", "tokenizers/qwen2/merges.txt", "tokenizers/qwen2/tokenizer_config.json",
          "tokenizers/qwen2/special_tokens_map.json", "tokenizers/qwen2/added_tokens.json",
          "README.md", "finance_topic/LICENSE", "finance_topic/DATASET_CARD.md", "general_mc/mc_suites/LICENSES",
          "general_mc/mmlu/LICENSE", "general_mc/truthfulqa/LICENSE", "gsm8k/LICENSE", "tokenizers/qwen2/LICENSE"]


def _tree(folder: Path) -> set[str]:
    """Every file under `folder`, as a '/'-joined path relative to it (caches left out)."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc")}


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("JAXDISTILL_DATA", "PYTHONPATH")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        elif path.is_file():
            shutil.copy2(path, src / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--no-index", "-q", "-w", str(out), str(src)],
                           capture_output=True, text=True, timeout=300, cwd=out)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (found,) = out.glob("jaxdistill-*.whl")
    return found


@pytest.fixture(scope="module")
def unpacked(wheel, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(folder)
    return folder


def _run_python(code: str, site: Path, cwd: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter with only the unpacked wheel (first on sys.path) to import jaxdistill from."""
    prelude = f"import sys; sys.path.insert(0, {str(site)!r}); "
    return subprocess.run([sys.executable, "-c", prelude + code, *args], cwd=cwd, env=_environment(),
                          capture_output=True, text=True, timeout=timeout)


def test_wheel_lists_the_shipped_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in NEEDED if f"jaxdistill/_data/{f}" not in names]
    assert not missing, f"the wheel lacks shipped data files: {missing}"
    shipped = {f"jaxdistill/_data/{f}" for f in _tree(ROOT / "data")}
    assert not shipped - names, f"data/ files not in the wheel: {sorted(shipped - names)[:10]}"
    assert not any(n.startswith("data/") for n in names), "the data must not install as a top-level 'data' folder"


def test_wheel_carries_every_module_and_config(wheel):
    """pyproject lists jaxdistill's subpackages by hand (mapping `_data` needs it): a new subpackage
    left out of that list shows up here as missing modules."""
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {f"jaxdistill/{f}" for f in _tree(ROOT / "jaxdistill") if f.endswith((".py", ".yaml"))}
    missing = sorted(sources - names)
    assert not missing, (f"not in the wheel: {missing[:10]}; add the new subpackage to "
                         "[tool.setuptools] packages in pyproject.toml")


def test_unpacked_wheel_reads_its_own_data(unpacked, tmp_path):
    code = """
import json, sys
from pathlib import Path
import jaxdistill
from jaxdistill import resources
from jaxdistill.data import load_source, load_tokenizer
from jaxdistill.evaluate.mc_suites import load_questions
train, validation = load_source("finance_topic", split="train"), load_source("finance_topic", split="validation")
tokenizer = load_tokenizer(None)
print(json.dumps({
    "module": jaxdistill.__file__, "data_dir": str(resources.data_dir()),
    "sys_path": [str(Path(p or ".").resolve()) for p in sys.path],
    "train": len(train), "validation": len(validation), "classes": len(train.label_names),
    "ids": tokenizer.encode("Stocks rally as the Fed holds rates"),
    "arc_easy": len(load_questions("arc_easy", limit=3)), "piqa": len(load_questions("piqa", limit=3)),
}))
"""
    proc = _run_python(code, unpacked, tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    site = unpacked.resolve()
    assert Path(out["module"]).resolve().is_relative_to(site), out["module"]
    assert Path(out["data_dir"]).resolve() == site / "jaxdistill" / "_data"
    assert str(ROOT) not in out["sys_path"]
    assert out["train"] > 10_000 and out["validation"] > 1_000 and out["classes"] == 20
    assert len(out["ids"]) > 3
    assert out["arc_easy"] == 3 and out["piqa"] == 3


def test_unpacked_wheel_without_its_data_says_what_to_do(unpacked, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(unpacked / "jaxdistill", site / "jaxdistill", ignore=shutil.ignore_patterns("_data"))
    code = ("from jaxdistill import resources\n"
            "try:\n    resources.data_dir()\n"
            "except FileNotFoundError as err:\n    print(type(err).__name__, err)\n")
    proc = _run_python(code, site, tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.startswith("DataDirNotFound") and "JAXDISTILL_DATA" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_cli_runs_the_tiny_config_from_the_unpacked_wheel(unpacked, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    proc = _run_python("from jaxdistill.cli import main; main()", unpacked, work, "run",
                       str(unpacked / "jaxdistill" / "configs" / "tiny.yaml"), f"run_dir={tmp_path / 'run'}",
                       f"cache_dir={tmp_path / 'cache'}", "train.steps=2", "teacher.prepare_steps=2", "eval=null",
                       "pruning=null", "data.subsample=100", "train.log_every=1", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    assert (tmp_path / "run" / "student" / "config.json").is_file()
