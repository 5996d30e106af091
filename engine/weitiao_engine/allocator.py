"""The process's memory allocator: tcmalloc when the machine has it, else glibc's malloc, pinned.

Why it matters on CPU: a training step allocates and frees the same activation-sized blocks (megabytes,
thousands per step). glibc's malloc either keeps freed blocks in its heap, where long-lived tensors between
them fragment it (~0.9 GB on Qwen2.5-0.5B's shape), or, above its mmap threshold (pinned at 1 MB for that
reason, `limit_heap_retention`), maps every block afresh and page-faults it in again: on that shape the
kernel spent 84 s of a 131 s run zeroing pages. tcmalloc keeps freed spans by size and reuses them: the same
peak memory, ~1.5x the training speed (BENCHMARKS.md, "− tcmalloc" row). PyTorch's CPU performance guide
recommends the same (tcmalloc or jemalloc through LD_PRELOAD); Debian/Ubuntu: `apt-get install
libtcmalloc-minimal4`, conda: `conda install gperftools`.

An allocator has to be there before the process's first malloc, so `use_tcmalloc()` re-executes the process
with LD_PRELOAD set, as its first act: same pid, same arguments, stdin not read yet.
WEITIAO_MALLOC=system keeps glibc; WEITIAO_MALLOC=/path/to/libtcmalloc.so picks the library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
import sys
from typing import Callable, Optional

_REEXECUTED = "WEITIAO_MALLOC_REEXEC"  # set across the exec, so a library that fails to preload is tried once
_SEARCH = ("/usr/lib/*/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4",
           "/usr/local/lib/libtcmalloc_minimal.so*", "/usr/lib/*/libtcmalloc.so.4", "/usr/lib64/libtcmalloc.so.4")  # fmt: skip


def tcmalloc_path() -> Optional[str]:
    """The tcmalloc library to preload: WEITIAO_MALLOC if it names a file, else the first one found."""
    setting = os.environ.get("WEITIAO_MALLOC", "auto")
    if setting == "system":
        return None
    if setting != "auto":
        return setting if os.path.isfile(setting) else None
    prefixes = {sys.prefix, os.environ.get("CONDA_PREFIX", sys.prefix)}  # conda's gperftools lives in the env
    patterns = [f"{p}/lib/libtcmalloc*.so*" for p in prefixes] + list(_SEARCH)
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    name = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
    return name if name and os.path.isabs(name) else None


def use_tcmalloc() -> None:
    """Re-executes this process with tcmalloc preloaded, unless it is already in use, turned off or absent."""
    if in_use() != "glibc" or os.environ.get(_REEXECUTED):
        return
    path = tcmalloc_path()
    if path is None:
        return
    preload = " ".join(filter(None, [path, os.environ.get("LD_PRELOAD")]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "LD_PRELOAD": preload, _REEXECUTED: "1"})


MISSING = ("tcmalloc not found: CPU training runs ~1.5x slower on glibc's malloc; install it (apt-get install "
           "libtcmalloc-minimal4) / 未找到 tcmalloc，CPU 训练约慢 1.5 倍，建议安装 libtcmalloc-minimal4")


def missing() -> bool:
    """Whether this process runs on glibc's malloc although tcmalloc was not turned off (none was found)."""
    return in_use() == "glibc" and os.environ.get("WEITIAO_MALLOC") != "system"


@functools.lru_cache(maxsize=None)
def in_use() -> str:
    """"tcmalloc", "jemalloc" or "glibc": which malloc this process runs on (what is mapped into it). Fixed for the
    process's life, so /proc/self/maps (thousands of lines once torch is loaded) is read once."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            maps = f.read()
    except OSError:  # not Linux
        return "system"
    for name in ("tcmalloc", "jemalloc"):
        if f"lib{name}" in maps:
            return name
    return "glibc"


def limit_heap_retention(threshold: int = 1 << 20) -> None:
    """With glibc: allocations of `threshold` bytes or more get their own mapping, returned to the OS when freed.

    glibc raises this threshold after the first large free (up to 32 MB), and from then on keeps freed
    activations and read buffers in its heap: on the 0.5B shape that held ~1.5 GB more than the step
    needed. 1 MB, not 4: a packed row's hidden states (tokens x hidden x 4 bytes, 3 MB for 880 tokens at
    width 896) kept by checkpointing between the layers' freed temporaries fragmented the heap by ~0.9 GB
    at batch 16 (peak 2,760 MiB at 4 MB, 1,795 MiB at 1 MB), paid for in page faults (see the module's
    docstring). Nothing to do under tcmalloc, nor where libc is not glibc.
    """
    if in_use() != "glibc":
        return
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(-3, threshold)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def release_freed_memory() -> None:
    """Hands the allocator's free pages back to the OS: glibc's malloc_trim, tcmalloc's ReleaseFreeMemory.

    Quantizing leaves many-MB read and scratch buffers freed between the small codes that stay; an
    allocator keeps such holes resident, which would cost QLoRA a third of its memory saving. Loading
    calls this after each matrix, so only what is in use stays.
    """
    global _release
    if _release is None:
        process = ctypes.CDLL(None)
        if hasattr(process, "MallocExtension_ReleaseFreeMemory"):
            _release = process.MallocExtension_ReleaseFreeMemory
        else:
            try:
                trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
                _release = lambda: trim(0)  # noqa: E731
            except (OSError, AttributeError):  # not glibc
                _release = lambda: 0  # noqa: E731
    _release()


_release: Optional[Callable[[], object]] = None
