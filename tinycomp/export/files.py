"""Putting an export's files into its folder: all of them, or none, and nothing of the user's lost.

`publish(folder, name, write, optional)` makes the files in a staging folder inside `folder` (the
same file system, also where `folder` is a mount point), then moves the old files it replaces (and
the optional files of another target it no longer writes) aside and the new ones in. An error or a
Ctrl-C at any step puts the old files back, so the folder holds the old export or the new one,
whole: one replace after another, a Ctrl-C between two had left a new model.o beside the old model.h
and library. Around that:

- the folder is locked (`flock` on the folder itself) while one export puts its files there: two
  exports into one folder at once had mixed their files, both reporting success;
- the moving back goes on through further Ctrl-Cs (the old files are in the staging folder, which a
  second Ctrl-C had deleted with them); if the file system refuses it, the staging folder is kept
  and the error says where the old files are;
- a staging folder an interrupted export left behind is removed by the next export of that name
  (under the lock: no other export is using it);
- anything but a file or a symbolic link where a file goes (a folder, a FIFO) is refused before
  anything is written: moved aside with the old files, a user's folder went with the staging folder;
- folders the export created are removed again if it fails.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

Write = Callable[[Path], dict[str, Path]]  # (a new folder) -> the files it wrote there, by kind


def check_folder(folder: Path) -> None:
    """Refuse, before any compiling, a destination that cannot be an export's folder."""
    if folder.is_symlink() and not folder.exists():  # mkdir's bare "File exists", after the whole compile
        raise FileNotFoundError(errno.ENOENT, f"the export folder {folder} is a symbolic link to "
                                              f"{os.readlink(folder)}, which does not exist", str(folder))
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"export() writes its files into the folder path; {str(folder)!r} is a file")


def publish(folder: Path, name: str, write: Write, optional: dict[str, str]) -> dict[str, Path]:
    """Write the export's files with `write` and put them into `folder` (see the module doc); the
    optional files by kind (`optional`) that `write` did not make are removed there. The files'
    paths in `folder`, by kind."""
    made = _make_folder(folder)
    try:
        with _locked(folder):
            for stale in folder.glob(f".{name}-export-*"):  # an interrupted export's
                shutil.rmtree(stale, ignore_errors=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{name}-export-", dir=folder))
            try:
                try:
                    staged = write(staging / "new")
                except OSError as exc:  # a full disk said "No space left on device" and not where
                    raise OSError(exc.errno, f"could not write the export into {folder}: {exc.strerror or exc}",
                                  exc.filename) from exc
                gone = [file_name for kind, file_name in optional.items() if kind not in staged]
                placed = _move_in(staged, folder, staging / "old", gone)
            except _Stranded:
                raise  # the old files are in the staging folder: kept
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            shutil.rmtree(staging, ignore_errors=True)
            return placed
    except BaseException:
        for created in reversed(made):  # folders this export made and could not fill: not left behind
            with contextlib.suppress(OSError):
                created.rmdir()
        raise


class _Stranded(OSError):
    """The old files could not all be moved back; the message says where they are."""


def _move_in(staged: dict[str, Path], folder: Path, saved: Path, gone: list[str]) -> dict[str, Path]:
    """Move the files in `folder` that the `staged` ones replace, and those named `gone`, into
    `saved`; then the staged ones into `folder`. On an error or a Ctrl-C, undo it (`_move_back`)."""
    taken = [folder / file.name for file in staged.values()] + [folder / n for n in gone]
    for there in taken:
        if _present(there) and not (there.is_symlink() or there.is_file()):
            kind = IsADirectoryError if there.is_dir() else FileExistsError
            raise kind(errno.EISDIR if there.is_dir() else errno.EEXIST,
                       f"the export would replace {there}, which is not a file; move it away first", str(there))
    saved.mkdir()
    moved_out: list[Path] = []
    moved_in: list[Path] = []
    try:  # each move noted before it is made: an interrupt may land just after one
        for there in taken:
            if _present(there):
                moved_out.append(there)
                os.replace(there, saved / there.name)
        for file in staged.values():
            moved_in.append(folder / file.name)
            os.replace(file, folder / file.name)
    except BaseException:
        _move_back(moved_in, moved_out, saved)
        raise
    return {kind: folder / file.name for kind, file in staged.items()}


def _move_back(moved_in: list[Path], moved_out: list[Path], saved: Path) -> None:
    """Remove the new files moved in and move the old ones back, through any further Ctrl-C (the
    old files would go with the staging folder); an OSError leaves them in `saved`, said."""
    while moved_in or moved_out:
        try:
            while moved_in:
                moved_in[-1].unlink(missing_ok=True)
                moved_in.pop()
            while moved_out:
                there = moved_out[-1]
                if _present(saved / there.name):
                    os.replace(saved / there.name, there)
                moved_out.pop()
        except KeyboardInterrupt:
            continue
        except OSError as exc:
            raise _Stranded(exc.errno, f"the export failed, and moving the files it replaced back failed too "
                                       f"({exc.strerror or exc}): they are in {saved}") from exc


def _present(path: Path) -> bool:
    """Is anything at `path`, a dangling symbolic link included?"""
    return path.is_symlink() or path.exists()


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on `folder` (flock on the folder itself: no file of ours in it)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _make_folder(folder: Path) -> list[Path]:
    """Make `folder` and its missing parents; the ones made, outermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return missing
