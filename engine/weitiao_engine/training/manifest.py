"""manifest.json: what a checkpoint directory holds, file by file (size and sha256), written last.

A checkpoint is written into a temp directory that is renamed into place (atomic.atomic_dir), so a crash
while saving leaves nothing. The manifest guards what comes after: a disk that filled up, a copy or sync
that truncated a file, a bit flip. `resume` trusts a checkpoint only when every file the manifest lists
has its size and sha256 (checkpoints.restore), and otherwise falls back to the next older one.

    {"format": 1, "step": 40, "files": [{"name": "adapter_model.safetensors", "bytes": 1234, "sha256": "…"}, …]}
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

MANIFEST = "manifest.json"
FORMAT = 1
_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path, step: int) -> None:
    """Lists every file of `directory` (subfolders included) with its size and sha256; written to a temp
    file and renamed, so the manifest itself is whole or absent."""
    files = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        files.append({"name": path.relative_to(directory).as_posix(), "bytes": path.stat().st_size, "sha256": sha256_of(path)})
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"format": FORMAT, "step": step, "files": files}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, directory / MANIFEST)


def has_manifest(directory: Path) -> bool:
    return (directory / MANIFEST).is_file()


def manifest_problem(directory: Path) -> Optional[str]:
    """Why `directory` does not match its manifest (a file missing, of another size, another sha256; an
    unreadable manifest), or None when it matches. Sizes are checked first: a truncated file is found
    without hashing the rest."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} is unreadable ({type(e).__name__}: {e})"
    for entry in files:
        path = directory / entry["name"]
        if not path.is_file():
            return f"{entry['name']} is missing"
        size = path.stat().st_size
        if size != entry["bytes"]:
            return f"{entry['name']} has {size} bytes, the manifest says {entry['bytes']}"
    for entry in files:
        if sha256_of(directory / entry["name"]) != entry["sha256"]:
            return f"{entry['name']} does not match its sha256 in the manifest"
    return None
