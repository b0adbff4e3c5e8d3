"""Temporary files beside their target: created exclusively, swept when a crash left them.

Every file this project writes atomically (checkpoints, models, downloads) is
first written to `.<target name>.<random>.tmp` in the target's directory, made by
`tempfile.mkstemp`: O_CREAT|O_EXCL, mode 0600, a name nobody can predict, so a
symlink planted in the directory cannot redirect the write.  A process killed
mid-write leaves its temporary behind; `sweep_stale_temporaries` removes those at
the next start.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import time
from pathlib import Path

# `.<target>.<random>.tmp`: what `create_beside` makes (and `.<target>.<pid>.tmp`, the older naming).
TEMP_PATTERN = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")
# A temporary younger than this may belong to a process still writing it (two
# processes sharing a download cache): leave it alone.
STALE_AFTER_SECONDS = 600.0


def create_beside(path: Path) -> tuple[int, Path]:
    """An exclusively created temporary file (fd open for writing, mode 0600) in `path`'s directory."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    return fd, Path(tmp)


def sweep_stale_temporaries(directory: Path, pattern: re.Pattern[str] = TEMP_PATTERN,
                            older_than: float = STALE_AFTER_SECONDS, now: float | None = None) -> list[Path]:
    """Delete regular files in `directory` whose names match `pattern` and that are older than `older_than` s.

    Symlinks and directories are never touched (lstat, not stat). Returns what was
    removed; a file that cannot be removed is left for the next start.
    """
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:  # no directory yet, or unreadable: nothing of ours to sweep
        return removed
    for entry in entries:
        if not pattern.match(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime > older_than:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed
