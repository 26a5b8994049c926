"""Write a file or a directory so that readers never see it half-written.

>>> with atomic_write(Path("out/model.gguf")) as tmp:  # doctest: +SKIP
...     write_the_file(tmp)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _sibling(target: Path, tag: str) -> Path:
    # In the same directory as the target, so the final rename never crosses a file system.
    return target.with_name(f".{target.name}.{tag}-{os.getpid()}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_write(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `target` to write (a file or a directory). When the block ends
    without an error the sibling takes `target`'s place (an old `target` is moved aside first and
    deleted only afterwards); after an error, or a kill, `target` is as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "tmp")
    _remove(tmp)
    try:
        yield tmp
        old = None
        if target.exists():
            old = _sibling(target, "old")
            _remove(old)
            target.rename(old)
        tmp.rename(target)
        if old is not None:
            _remove(old)
    finally:
        _remove(tmp)
