"""Test set-up: 8 virtual CPU devices for the sharding tests (set before JAX is imported), and one
persistent XLA compilation cache for the session (a fresh directory, removed at the end; subprocesses
inherit it): many tests compile the same small programs, and XLA's own cache serves them compiled.
Tests that watch compilations switch it off (`no_persistent_cache`)."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _XLA_CACHE = tempfile.mkdtemp(prefix="jaxdistill-tests-xla-")
    atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

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


@pytest.fixture
def no_persistent_cache():
    """XLA's persistent compilation cache off for one test (one that counts backend compilations)."""
    import jax

    before = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    yield
    jax.config.update("jax_enable_compilation_cache", before)
