"""Atomic file writes: write to a temporary name in the same directory, then rename over the target,
so a crash or kill never leaves a half-written checkpoint or result file behind."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(target: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, fsync it, then rename it to `target` (with the usual permissions,
    0666 less the umask, whatever mode the writer created it with: safetensors makes 0600 files)."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(target: str | os.PathLike, obj: Any) -> None:
    atomic_write(target, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


NO_SPACE_TEXT = ("No space left on device", "os error 28", "os_error_code='28'", "Disk quota exceeded")


def no_space(err: BaseException | None) -> OSError | None:
    """The out-of-space error behind `err` (itself, or a cause / context of it), if any, as an OSError
    (libraries such as tensorstore and safetensors report ENOSPC in other exception types' text)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            return err
        if any(text in str(err) for text in NO_SPACE_TEXT):
            return OSError(errno.ENOSPC, "No space left on device")
        err = err.__cause__ or err.__context__
    return None


def jsonl_records(path: str | os.PathLike) -> list[dict]:
    """The records of an append-only JSONL file whose every record is one line written with its
    newline. A kill can tear only the last line: the text after the last newline is cut off the file
    (so the next append starts a line of its own). A bad line before it is a `ValueError` naming it."""
    path = Path(path)
    data = path.read_bytes()
    complete = data[:data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    records = []
    for n, line in enumerate(complete.decode(errors="replace").splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as err:
                raise ValueError(f"{path}:{n}: not a JSON record ({err})") from err
    return records
