"""Writing outputs without ever leaving a half-written or clobbered file.

Rules every command follows: each file is written to a temporary file in its
own directory and renamed into place (os.replace), with the permissions a plain
`open()` would give under the user's umask (mkstemp/mkdtemp would give 0600 and
0700); a directory that already exists is updated in place, file by file, and
only the files tinyscale generated there are replaced or removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from tinyscale.errors import OutputExistsError, TinyscaleError


def output_error(path: Path, exc: OSError) -> TinyscaleError:
    """The one-line error for an output path the OS refused."""
    return TinyscaleError(f"cannot write {path}: {exc.strerror or exc}")


def _umask() -> int:
    # There is no way to read the umask without setting it; restore it at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open(path, "w")` would give a new file: 0666 minus the umask."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode `mkdir` would give a new folder: 0777 minus the umask."""
    return 0o777 & ~_umask()


def make_dirs(path: Path) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(path, exc) from None


def atomic_write(path: Path, write: Callable[[Path], None], suffix: str = ".tmp") -> None:
    """Make `path` appear whole or not at all: `write` fills a temporary file beside it
    (same folder, so the rename is atomic), which then replaces `path`. The temporary file
    ends in `suffix` for writers that go by it (Keras wants ".keras"); any failure removes it."""
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise output_error(path, exc) from None
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())  # mkstemp's 0600 would outlive the rename
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise output_error(path, exc) from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


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


def check_writable_dir(path: Path) -> None:
    """Fail now, not after minutes of work, if files cannot be created in `path`.

    Creates the missing folders and a probe file, then removes both again: a
    command that fails later (bad data) leaves nothing behind.
    """
    path = Path(path)
    created = []
    try:
        for folder in reversed([path, *path.parents]):
            if not folder.exists():
                folder.mkdir()
                created.append(folder)
        fd, probe = tempfile.mkstemp(prefix=".tinyscale-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise output_error(path, exc) from None
    finally:
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass


def check_writable_file(path: Path) -> None:
    """`check_writable_dir` for the folder of an output file, and the file is not a folder."""
    path = Path(path)
    if path.is_dir():
        raise TinyscaleError(f"cannot write {path}: it is a directory")
    check_writable_dir(path.parent)


def check_output_dir(path: Path, force: bool) -> None:
    """Fail fast, before any long work, on an output directory we must not touch or cannot write."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} exists and is not a directory")
    refuse_clobber(path, force)
    check_writable_dir(path)


def staging_directory(out: Path) -> Path:
    """An empty hidden directory to build a whole output tree in, on `out`'s file system.

    Inside `out` when it exists (so `-o .` works and nothing beside it is
    touched), else beside it, so that publishing is a rename either way.
    """
    out = Path(os.path.abspath(out))  # `.` has no name and no parent of its own
    parent = out if out.is_dir() else out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
        os.chmod(staged, dir_mode())  # it becomes `out` itself when `out` is new
        return staged
    except OSError as exc:
        raise TinyscaleError(f"cannot write {out}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class TreeChanges:
    """What publishing a tree did to the output directory (paths relative to it, POSIX)."""

    written: tuple[str, ...]  # every file of the new tree
    replaced: tuple[str, ...] = ()  # written over a file that was there
    kept: tuple[str, ...] = ()  # there before, not ours: left alone ("dir/" for a whole folder)
    removed: tuple[str, ...] = ()  # generated last time, not generated now: deleted

    def to_dict(self) -> dict:
        return {"written": list(self.written), "replaced": list(self.replaced), "kept": list(self.kept),
                "removed": list(self.removed)}

    def describe(self) -> list[str]:
        """Indented report lines, one per kind of change (none for a fresh folder)."""
        lines = []
        for label, names in (("replaced", self.replaced), ("kept (yours)", self.kept),
                             ("removed (no longer generated)", self.removed)):
            if names:
                lines.append(f"  {label}: {', '.join(names)}")
        return lines


def relative_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file() or p.is_symlink())


def safe_relative(names: Iterable[object]) -> set[str]:
    """The entries of a recorded file list that name a path inside the folder (never `..`, never absolute)."""
    safe = set()
    for name in names:
        if not isinstance(name, str) or not name:
            continue
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts or "\\" in name:
            continue
        safe.add(pure.as_posix())
    return safe


def remove_generated(out: Path, names: Iterable[str]) -> tuple[str, ...]:
    """Delete these files (generated by an earlier run) and the folders they leave empty."""
    out = Path(out)
    removed = []
    for name in sorted(safe_relative(names)):
        path = out / name
        if not path.is_file() or path.is_symlink():
            continue  # gone already, or something the user put there in its place
        try:
            path.unlink()
        except OSError as exc:
            raise output_error(path, exc) from None
        removed.append(name)
        for folder in path.parents:
            if folder == out or not folder.is_relative_to(out):
                break
            try:
                folder.rmdir()  # only succeeds while empty: a user's file keeps its folder
            except OSError:
                break
    return tuple(removed)


def untouched_entries(out: Path, ours: set[str]) -> tuple[str, ...]:
    """What lies in `out` besides `ours`: files, or "folder/" for a folder holding none of ours."""
    out = Path(out)
    prefixes = {parent.as_posix() for name in ours for parent in PurePosixPath(name).parents}
    kept = []

    def walk(folder: Path) -> None:
        try:
            entries = sorted(folder.iterdir())
        except OSError:  # a folder we may not read holds nothing of ours
            return
        for entry in entries:
            name = entry.relative_to(out).as_posix()
            if entry.is_dir() and not entry.is_symlink():
                if name in prefixes:
                    walk(entry)
                else:
                    kept.append(name + "/")
            elif name not in ours:
                kept.append(name)

    walk(out)
    return tuple(kept)


def publish_tree(staged: Path, out: Path, previous: Iterable[str] = ()) -> TreeChanges:
    """Move a finished `staged` tree (from `staging_directory(out)`) to `out`.

    A new `out` is the staged folder renamed. An existing one is updated in
    place: each file is renamed over its old version (atomic per file), the
    files of `previous` (what tinyscale wrote there last time) that the new
    tree lacks are removed, and everything else in `out` is left alone.
    On an OSError `staged` is left (with what was not moved yet) for the caller
    to remove or keep.
    """
    staged, out = Path(staged), Path(out)
    files = relative_files(staged)
    try:
        if not out.exists():
            os.rename(staged, out)
            return TreeChanges(tuple(files))
        replaced = tuple(name for name in files if (out / name).is_file())
        for name in files:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged / name, out / name)
    except OSError as exc:
        raise output_error(out, exc) from None
    shutil.rmtree(staged, ignore_errors=True)
    removed = remove_generated(out, safe_relative(previous) - set(files))
    kept = untouched_entries(out, set(files) | set(removed))  # a folder we emptied of ours is listed by file
    return TreeChanges(tuple(files), replaced, kept, removed)


def keep_failed_directory(staged: Path, out: Path) -> Path:
    """Rename a staged tree that a failure interrupted to a visible `<out>.failed[-N]` beside `out`.

    Used when the tree already holds something costly (a trained model): the
    user keeps it, `out` itself stays untouched. Returns where it now is.
    """
    out = Path(os.path.abspath(out))
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
