"""The engine's allocator (allocator.py): tcmalloc preloaded by re-executing the process, before the request
is read; glibc when turned off or when no usable library is there; freed memory handed back under either."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from weitiao_engine import allocator

ENGINE_DIR = Path(__file__).resolve().parents[1]
TCMALLOC = allocator.tcmalloc_path()
needs_tcmalloc = pytest.mark.skipif(TCMALLOC is None, reason="no tcmalloc on this machine (apt-get install libtcmalloc-minimal4)")


def count_tokens(run_engine, tiny_model: str) -> tuple[str, dict]:
    """(the allocator the engine's hello reports, its result) for a small count-tokens request."""
    messages = [{"role": "user", "content": "味道很好，送餐也快！"}, {"role": "assistant", "content": "好评"}]
    code, events = run_engine("count-tokens", {"model": tiny_model, "examples": [{"messages": messages}]})
    assert code == 0 and events[0]["type"] == "hello" and events[-1]["type"] == "result"
    return events[0]["allocator"], events[-1]["data"]


@needs_tcmalloc
def test_engine_reexecutes_itself_on_tcmalloc_and_still_reads_its_request(run_engine, tiny_model, monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("WEITIAO_MALLOC", raising=False)
    on_tcmalloc, result = count_tokens(run_engine, tiny_model)
    assert on_tcmalloc == "tcmalloc"

    monkeypatch.setenv("WEITIAO_MALLOC", "system")
    on_glibc, same = count_tokens(run_engine, tiny_model)
    assert on_glibc == "glibc" and same == result  # the request on stdin survived the exec: same answer either way


def test_engine_falls_back_to_glibc_when_the_library_is_missing_or_unusable(run_engine, tiny_model, monkeypatch, tmp_path):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setenv("WEITIAO_MALLOC", str(tmp_path / "missing.so"))
    assert count_tokens(run_engine, tiny_model)[0] == "glibc"
    not_a_library = tmp_path / "libtcmalloc_fake.so"
    not_a_library.write_text("not an ELF file")
    monkeypatch.setenv("WEITIAO_MALLOC", str(not_a_library))  # ld.so ignores it; the engine must not exec again and again
    assert count_tokens(run_engine, tiny_model)[0] == "glibc"


RELEASE = """
import resource, torch
from weitiao_engine import allocator
from weitiao_engine.loading import resident_mib
print(allocator.in_use())
blocks = [torch.ones(4 << 20) for _ in range(64)]  # 64 x 16 MB
held = resident_mib()
del blocks
allocator.release_freed_memory()
print(held, resident_mib())
"""


@pytest.mark.parametrize("library", [pytest.param(TCMALLOC, marks=needs_tcmalloc, id="tcmalloc"), pytest.param(None, id="glibc")])
def test_release_freed_memory_hands_pages_back(library):
    """Quantized loading relies on it: read buffers freed between the codes that stay must not stay resident."""
    env = {**os.environ, "PYTHONPATH": str(ENGINE_DIR)}
    env.pop("LD_PRELOAD", None)
    if library:
        env["LD_PRELOAD"] = library
    out = subprocess.run([sys.executable, "-c", RELEASE], capture_output=True, text=True, env=env, check=True).stdout.split()
    assert out[0] == ("tcmalloc" if library else "glibc")
    held, after = float(out[1]), float(out[2])
    assert held - after > 0.9 * 1024, (held, after)  # ~1 GiB allocated, nearly all of it given back
