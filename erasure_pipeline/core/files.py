"""Files a process creates once in the project home (the local pepper and signing key), safely against a race."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def create_once(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data`` (mode 0600) unless it exists; True when this call created it.

    Written to a temporary file of its own, then hard-linked into place: the link fails when another process
    created ``path`` first, so every process that starts at once (a daemon and a webserver, a pool's workers)
    ends up reading the one file the first of them wrote, never a second secret that replaced it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:  # mkstemp makes it 0600
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: an atomic rename, the last of racing writers winning
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
