"""Writing outputs without ever leaving a half-written or clobbered file."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tinyscale.errors import OutputExistsError, TinyscaleError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same directory, then rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise TinyscaleError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise TinyscaleError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def refuse_clobber(path: Path, force: bool, what: str = "output") -> None:
    """Refuse an existing file, or a non-empty directory, unless `force`."""
    path = Path(path)
    if force or not path.exists():
        return
    if path.is_dir():
        if any(path.iterdir()):
            raise OutputExistsError(f"{what} directory {path} exists and is not empty; use --force to overwrite")
        return
    raise OutputExistsError(f"{what} {path} exists; use --force to overwrite")


def check_output_dir(path: Path, force: bool) -> None:
    """Fail fast, before any long work, on an output directory we must not touch."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} exists and is not a directory")
    refuse_clobber(path, force)


def staging_directory(out: Path) -> Path:
    """An empty hidden directory beside `out` to build a whole output tree in."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise TinyscaleError(f"cannot write beside {out}: {exc.strerror or exc}") from None


def publish_directory(staged: Path, out: Path) -> None:
    """Move a finished `staged` tree to `out`; an old `out` is removed only afterwards.

    Both live in the same parent, so each step is a rename: at no point is
    `out` missing or half-written.
    """
    if not out.exists():
        os.rename(staged, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    os.rename(out, old / "previous")
    os.rename(staged, out)
    shutil.rmtree(old, ignore_errors=True)


def keep_failed_directory(staged: Path, out: Path) -> Path:
    """Rename a staged tree that a failure interrupted to a visible `<out>.failed[-N]` beside `out`.

    Used when the tree already holds something costly (a trained model): the
    user keeps it, `out` itself stays untouched. Returns where it now is.
    """
    for attempt in range(1, 100):
        kept = out.parent / (f"{out.name}.failed" if attempt == 1 else f"{out.name}.failed-{attempt}")
        if kept.exists():
            continue
        try:
            os.rename(staged, kept)
        except OSError:
            return staged
        return kept
    return staged
