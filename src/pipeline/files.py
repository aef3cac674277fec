"""Publishing stage outputs so that concurrent pipeline runs never read each other's partial files."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def published_dir(final: Path, replace: bool = True) -> Iterator[Path]:
    """Yield a private staging folder beside ``final``; when the block succeeds, move it into place.

    Every writer stages into its own folder, so two runs writing the same output at the same time
    never interleave files, and a reader sees either no folder or a complete one. Output folders
    are named after their inputs, so two finished writers hold the same content:

    - ``replace=False``: a folder already in place is kept and the new one is dropped (for folders
      named after a content fingerprint).
    - ``replace=True``: the new folder replaces the old one (for folders named after their inputs,
      whose content may still change with the code that writes them).

    If the block raises, the staging folder is removed and ``final`` is left as it was.
    """
    final = Path(final)
    staging = staging_dir(final.parent, final.name)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    move_into_place(staging, final, replace)


def staging_dir(parent: Path, name: str) -> Path:
    """Create and return a private, hidden staging folder in ``parent`` for an output called ``name``."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=parent))


def move_into_place(staging: Path, final: Path, replace: bool = True) -> None:
    """Rename ``staging`` to ``final``; see :func:`published_dir` for ``replace``.

    With ``replace``, a folder in place is moved aside and ours renamed in. If another writer's
    folder lands in between, it finished as recently as ours and holds the same kind of complete
    output, so it stays and ours is dropped: never a retry loop that busy writers could starve.
    """
    if final.exists() and not replace:
        shutil.rmtree(staging, ignore_errors=True)
        return
    if _rename(staging, final):
        return
    if replace:
        aside = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.old")
        with contextlib.suppress(FileNotFoundError):  # another writer moved it aside first
            os.rename(final, aside)
        shutil.rmtree(aside, ignore_errors=True)
        if _rename(staging, final):
            return
    shutil.rmtree(staging, ignore_errors=True)  # a complete folder from another writer is in place


def _rename(staging: Path, final: Path) -> bool:
    """Rename ``staging`` to ``final`` atomically; return ``False`` if a non-empty ``final`` is in the way."""
    try:
        os.rename(staging, final)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        return False
    return True


def parameters_digest(parameters: dict[str, Any], length: int = 10) -> str:
    """Return a short stable hash of a mapping of parameters, for naming the folder they produce."""
    payload = json.dumps(parameters, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


MAX_SKETCH_FILE_BYTES = 1 << 30  # predict reads a file whole into memory: a larger one is refused by name


def check_source_file(path: Path, root: Path | None = None, max_bytes: int | None = None) -> None:
    """Raise a :class:`~pipeline.strokes.StrokeFormatError` naming ``path`` unless it is a regular file (not a
    FIFO, device or folder, which could block a read or never end), inside ``root`` once links are
    resolved (a link out of the data folder is not followed), and of at most ``max_bytes``."""
    from pipeline.strokes import StrokeFormatError

    path = Path(path)
    if root is not None:
        resolved, inside = path.resolve(), Path(root).resolve()
        if resolved != inside and inside not in resolved.parents:
            raise StrokeFormatError(f"{path}: a link to {resolved}, outside the data folder {root}; not read")
    try:
        stat = path.stat()
    except OSError as exc:
        raise StrokeFormatError(f"{path}: {exc.strerror}") from None
    import stat as kinds

    if not kinds.S_ISREG(stat.st_mode):
        raise StrokeFormatError(f"{path}: not a regular file (a FIFO, device or folder); not read")
    if max_bytes is not None and stat.st_size > max_bytes:
        size, limit = stat.st_size / 2**30, max_bytes / 2**30
        raise StrokeFormatError(f"{path}: {size:.1f} GiB, over the {limit:g} GiB that is read whole")
