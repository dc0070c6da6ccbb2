"""The `jaxdistill` console script: glibc's transparent huge pages for malloc, then the CLI.

XLA:CPU (and PyTorch) take the step's large temporary buffers from malloc, which maps them fresh from
the kernel and unmaps them again every step: on the 2-core VM the `cpu_small` step touched ~64k new
4 KiB pages per step, ~120 ms of kernel time per step. With glibc's `glibc.malloc.hugetlb=1` tunable
malloc asks for transparent huge pages (madvise): no new faults per step, the kernel time per step
halves, the step goes from ~705 to ~670 ms (benchmarks/RESULTS.md). A tunable is read when a process starts, so the launcher re-executes itself
once with GLIBC_TUNABLES set, before anything heavy is imported. It does nothing when GLIBC_TUNABLES is
already set (yours wins), outside Linux/glibc >= 2.35, or with JAXDISTILL_HUGE_PAGES=0.
`python -m jaxdistill.cli` runs the CLI without it.
"""

from __future__ import annotations

import os
import sys

TUNABLES = "glibc.malloc.hugetlb=1"


def _glibc_version() -> tuple[int, int] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, ValueError, OSError):
        return None


REEXECUTED = "_JAXDISTILL_REEXECUTED"  # set in the re-executed process: never a second exec (glibc drops
                                      # GLIBC_TUNABLES from setuid/capability processes, so its presence alone
                                      # cannot end the loop)


def huge_pages_env(environ, platform: str, glibc: tuple[int, int] | None) -> dict[str, str] | None:
    """The environment to re-execute with, or None to run as is."""
    if (not platform.startswith("linux") or glibc is None or glibc < (2, 35) or "GLIBC_TUNABLES" in environ
            or REEXECUTED in environ or environ.get("JAXDISTILL_HUGE_PAGES", "1") == "0"):
        return None
    return {**environ, "GLIBC_TUNABLES": TUNABLES, REEXECUTED: "1"}


def main():
    env = huge_pages_env(os.environ, sys.platform, _glibc_version())
    if env is not None:
        try:  # the same command line (keeps `python -X ... script args`), this interpreter
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
        except OSError:
            pass  # run without huge pages
    os.environ.pop(REEXECUTED, None)  # not inherited by the processes this one starts
    from jaxdistill.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
