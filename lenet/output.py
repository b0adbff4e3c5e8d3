"""The model file a run ends with: its path checked before training, and never lost to a failed write.

`check_output` fails at start, in one line, for a path that could not take the
model at the end (its parent is a file, it is a directory, its directory is not
writable), so that no run trains for an hour and then cannot save.  The disk can
still fill up meanwhile: `save_final` then writes the parameters elsewhere (the
checkpoint directory, else a new directory under the system's temporary
directory) and its error says where, so the trained model is never lost.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lenet.status import StorageError
from lenet.tempfiles import create_beside


def check_output(path: str | os.PathLike, flag: str = "--output") -> Path:
    """`path` as a Path if a model can be written there (its directory is made if missing); StorageError if not."""
    path = Path(path)
    if path.is_dir():
        raise StorageError(f"{flag} {path} is a directory: give a file name, e.g. {path / 'lenet5.npz'}")
    parent = path.parent
    for ancestor in (parent, *parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise StorageError(f"{flag} {path}: {ancestor} is not a directory")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = create_beside(path)  # the very kind of file the final write makes
        os.close(fd)
        probe.unlink()
    except OSError as err:
        raise StorageError(f"{flag} {path}: cannot write in {parent}: {err.strerror or err}") from None
    return path


def save_final(path: str | os.PathLike, write: Callable[[Path], object],
               keep_in: Sequence[Path | None] = ()) -> Path:
    """`write(path)`; if that fails (StorageError), `write` into the first of `keep_in` (None: skipped),
    then a fresh temporary directory, that works, and raise a StorageError that names where the model is.

    A file already there (kept by an earlier run) is not overwritten: the name then gets a time and pid.
    """
    path = Path(path)
    try:
        write(path)
        return path
    except StorageError as err:
        failure = err
    for directory in [*(d for d in keep_in if d is not None), None]:
        try:
            place = Path(tempfile.mkdtemp(prefix="lenet5-model-")) if directory is None else directory
            kept = place / path.name
            if kept.resolve() == path.resolve():
                continue
            if kept.exists():  # a model an earlier run kept here: never overwrite it
                kept = place / f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}{path.suffix}"
            write(kept)
        except (OSError, StorageError):
            continue
        raise StorageError(f"{failure}; the trained model was saved to {kept} instead") from None
    raise StorageError(f"{failure}; nowhere else could take the model either (tried "
                       f"{', '.join(str(d) for d in keep_in if d is not None) or 'no checkpoint directory'} and "
                       f"{tempfile.gettempdir()})") from None
