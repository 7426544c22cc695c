"""Writing result files so that a reader (or a crash) never sees half of one."""

from __future__ import annotations

import os
import secrets
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
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # O_EXCL: never an existing file; mode 0o666 less the umask, as open(path, "w") would give
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
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
