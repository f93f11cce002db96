"""Atomic file output: write to a temporary file beside the target, then rename.

Every file bitmaps writes goes through :func:`atomic_output`, so a crash, a failed verification or a
Ctrl-C never leaves a partial checkpoint, ONNX model or report where the user expects a good one.
The temporary file is flushed to disk before the rename (a power cut leaves the old file or the new
one, not an empty one). A process killed outright (SIGKILL, the OOM killer) cannot remove its
temporary file; the next write to the same output on the same machine does
(``.NAME.HOST-PID.*.tmp`` whose process is gone).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bitmaps.core.errors import BitmapsError, one_line

# What a failed write of the output itself raises: no space, quota, file too large, read-only.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def check_writable(path: str | os.PathLike, *, probe: bool = True) -> Path:
    """Fail early, before any expensive work, if ``path`` cannot be written (``probe``: by creating
    and removing a file beside it; atomic_output's own temporary file is that probe)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise BitmapsError(f"output path {path} is a directory; give a file name")
    if path.exists() and not path.is_file():  # a device, a FIFO, a socket: the rename would
        # replace the node itself (as root, -o /dev/null --overwrite replaced /dev/null)
        raise BitmapsError(f"output path {path} is not a regular file; give a file name")
    if parent.exists() and not parent.is_dir():
        raise BitmapsError(f"cannot write {path}: {parent} is a file, not a folder")
    if not parent.is_dir():
        # a file further up (file.txt/sub/out.pt): no folder can be made there
        blocker = next((p for p in parent.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise BitmapsError(f"cannot write {path}: {blocker} is a file, not a folder")
        raise BitmapsError(f"cannot write {path}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise BitmapsError(f"cannot write {path}: folder {parent} is not writable")
    if not probe:
        return path
    # what the access check cannot see: a folder that takes no files (/proc), a full disk (an
    # empty file needs no space: one byte is written, which a full file system refuses)
    name = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        try:
            os.write(fd, b"\0")
        finally:
            os.close(fd)
    except OSError as exc:
        raise BitmapsError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if name is not None:
            with contextlib.suppress(OSError):
                os.unlink(name)
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (the same inode where both exist, else the same path)."""
    try:
        if Path(a).exists() and Path(b).exists():
            return os.path.samefile(a, b)
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):  # RuntimeError: resolve() on a loop of symbolic links
        return False


def file_identity(path: str | os.PathLike) -> tuple[int, int, int, int] | None:
    """What tells one version of the file at ``path`` from another (device, inode, size,
    modification time), or None where there is none: a run that writes an output several times
    compares it before each write, to find a file another process put there meanwhile."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def check_not_input(output: str | os.PathLike, source: str | os.PathLike, what: str) -> None:
    """Refuse to write ``output`` over ``source`` (``what`` names it): that would destroy it."""
    if same_file(output, source):
        raise BitmapsError(
            f"{output} is also the {what}: writing it would destroy that file; give another "
            "output path"
        )


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (threads may be writing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set, then restore at once
    os.umask(mask)
    return mask


def _host() -> str:
    """This machine's name as a temporary file may carry it (no separators, no dots)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64] or "host"


def _running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (one that cannot be signalled does)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's process
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files of ``path`` that killed processes of this machine left."""
    own = re.compile(re.escape(f".{path.name}.{_host()}-") + r"(\d+)\.[^/]*\.tmp")
    try:
        entries = os.scandir(path.parent if str(path.parent) else ".")
    except OSError:
        return
    with entries:
        for entry in entries:
            m = own.fullmatch(entry.name)
            if m and not _running(int(m[1])):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder: its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OutputChanged(BitmapsError):
    """atomic_output(..., expect=...): the output is no longer what the writer last saw."""


ANY = object()  # atomic_output's default expect: replace whatever is there


def _publish(tmp_path: Path, path: Path, expect: object) -> None:
    """Put the finished temporary file at ``path``: replacing whatever is there (``expect`` ANY),
    only where nothing is (None: a hard link, which fails if another process got there first),
    or only where the file is still ``expect`` (a file_identity; checked just before the
    rename)."""
    if expect is None:
        try:
            os.link(tmp_path, path)
        except FileExistsError:
            raise OutputChanged(f"{path} was created by something else meanwhile") from None
        except OSError as exc:  # a file system without hard links: check, then rename
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            if path.exists():
                raise OutputChanged(f"{path} was created by something else meanwhile") from None
            os.replace(tmp_path, path)
        return
    if expect is not ANY and file_identity(path) != expect:
        raise OutputChanged(f"{path} was changed by something else meanwhile")
    os.replace(tmp_path, path)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, expect: object = ANY) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; put it at ``path`` only on success.

    ``expect``: ANY (default) replaces whatever is at ``path``; None publishes only if nothing is
    there (no other process's output is ever replaced); a :func:`file_identity` only if the
    output is still that file. Otherwise :class:`OutputChanged`, and the output is left alone.
    """
    path = check_writable(path, probe=False)
    folder = path.parent if str(path.parent) else Path(".")
    _remove_stale_temporaries(path)
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.{_host()}-{os.getpid()}.", suffix=".tmp", dir=folder
        )
    except OSError as exc:  # a folder the access check passes but that takes no files (/proc)
        raise BitmapsError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 minus umask).
        os.chmod(tmp_path, 0o666 & ~_umask())
        _fsync(tmp_path)  # the data on disk before the name points at it
        _publish(tmp_path, path, expect)
        with contextlib.suppress(OSError):  # the rename itself (some file systems refuse this)
            _fsync(folder)
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS and exc.filename not in (str(tmp_path), str(path)):
            raise
        raise BitmapsError(f"cannot write {path}: {exc.strerror or exc}") from None
    except RuntimeError as exc:  # torch.save reports a failed write (a full disk) this way
        if "inline_container" not in str(exc) and "PytorchStreamWriter" not in str(exc):
            raise
        raise BitmapsError(
            f"cannot write {path}: the write failed (is the disk full?): {one_line(exc)}"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            if tmp_path.exists():
                tmp_path.unlink()
