"""Files that appear whole or not at all: written under a temporary name in the same folder, then renamed.

A process killed while writing (a worker stopped by the OOM killer, a download cut off) leaves the previous file,
or none, never half of one; readers in other processes never see a partial file. The temporary name is unique,
so two writers of the same file do not write into each other's, and it starts with a dot, so a listing of the
folder can skip it. The file gets the permissions of any new file (the umask's).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed to ``path`` if the block ends normally, deleted if
    it raises."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        yield temporary
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
