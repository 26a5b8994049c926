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

from tunelab.errors import WriteFailed


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
    deleted only afterwards); after an error, or a kill, `target` is as it was. A write the system
    refuses (a full disk, a size limit) raises WriteFailed naming `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "tmp")
    _remove(tmp)
    try:
        try:
            yield tmp
        except Exception as exc:
            # an OSError, or a library's own error around one (safetensors' Rust "(os error 28)")
            if isinstance(exc, OSError) or "os error" in str(exc):
                kept = "the previous one is kept" if target.exists() else "nothing was written"
                reason = getattr(exc, "strerror", None) or str(exc)
                raise WriteFailed(f"{target} could not be written ({reason}; a full disk?); {kept}") from exc
            raise
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
