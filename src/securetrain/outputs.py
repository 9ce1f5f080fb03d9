"""Writing result files: never over an existing file, and never half-written."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from securetrain.errors import DataError


def check_new_file(out: Path) -> None:
    if out.exists():
        raise DataError(
            f"Output file already exists: {str(out)!r}; choose another `out` or remove it."
        )
    if not out.resolve().parent.is_dir():
        raise DataError(f"Output directory does not exist: {str(out.resolve().parent)!r}.")


def write_path_atomic(out: Path, write: Callable[[Path], object]) -> None:
    """Let ``write`` create a temporary file beside ``out``, then rename it into place."""
    check_new_file(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.resolve().parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_file_atomic(out: Path, content: str | bytes) -> None:
    """Write ``content`` to ``out`` atomically (see :func:`write_path_atomic`)."""
    data = content.encode() if isinstance(content, str) else content
    write_path_atomic(out, lambda path: path.write_bytes(data))


def check_new_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(
            f"Output path already exists: {str(out)!r}; choose another `out` or remove it."
        )
    if not out.resolve().parent.is_dir():
        raise DataError(f"Output directory's parent does not exist: {str(out.resolve().parent)!r}.")


def write_dir_atomic(out: Path, fill: Callable[[Path], None]) -> None:
    """Let ``fill`` write into a temporary directory beside ``out``, then rename it into place."""
    check_new_dir(out)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.resolve().parent)
    )
    try:
        fill(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
