"""Directories written all at once: a checkpoint or a saved model is either complete or absent."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_dir(final: Path, mode: int = 0o755) -> Iterator[Path]:
    """Yields an empty temp directory beside `final`; on success it replaces `final`, on error it is removed.

    A reader (the control plane listing checkpoints, a resume after a crash) never sees half a directory.
    `mode` is the finished directory's permission bits.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, mode)  # mkdtemp makes it 0700
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
