"""Writing result files so that a reader (or a crash) never sees half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path, data: bytes | str) -> None:
    """Writes ``data`` to ``path`` at once: into a temporary file beside it, then ``os.replace``.

    The rename is atomic on POSIX and Windows file systems, so ``path`` holds either its old
    content or all of ``data``, never a truncated file, even when the process is killed.
    ``str`` data is written as UTF-8.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
