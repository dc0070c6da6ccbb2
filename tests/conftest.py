"""Test set-up: 8 virtual CPU devices for the sharding tests (set before JAX is imported)."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tests.tiny_models import FAMILIES, make_hf_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """family name -> directory of a tiny random Hugging Face checkpoint (built once per session)."""
    root = tmp_path_factory.mktemp("hf")
    return {name: make_hf_checkpoint(name, root / name) for name in FAMILIES}


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path, monkeypatch):
    """Each test gets its own jaxdistill cache (prepared teachers, traces, converted models), never the
    user's ~/.cache/jaxdistill; subprocesses inherit it through the environment."""
    monkeypatch.setenv("JAXDISTILL_CACHE", str(tmp_path / "jaxdistill-cache"))
