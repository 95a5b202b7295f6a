"""Atomic file output: a reader never sees a half-written file under the final name, a crash
(even kill -9) leaves no temporary behind, and new files get the user's umask.

How the temporary is made, and why:
- Where the kernel offers O_TMPFILE (Linux on ext4, xfs, btrfs, tmpfs...), the data goes into an
  unnamed inode of the target's directory: a process killed mid-write leaves nothing a user could
  ever see, since the inode has no name until it is complete. Writers that want a path (gguf's
  GGUFWriter, safetensors) get ``/proc/self/fd/N``. Once complete the inode is linked under a
  temporary name and renamed onto the final one (linkat cannot replace an existing file); only
  a kill inside those two system calls can leave the temporary name. linkat of an unnamed inode
  works by AT_EMPTY_PATH (needs CAP_DAC_READ_SEARCH) or through /proc (which some sandboxes
  refuse with EXDEV); where neither does, the data is copied once into a named temporary and
  that filesystem uses named temporaries from then on.
- Elsewhere it is a named file in the same directory (rename is only atomic within one filesystem).
In both cases the temporary's name says who made it: ``.<final name>.ggtune-<host>-<pid>-<random>.partial``.
Each write first removes temporaries of the same final name made on this host by a process that is
gone, so what a crash leaves is cleaned up by the next write of that file; a running writer's
files are never touched (its pid is alive), nor another machine's (on a shared filesystem its pids
mean nothing here).

Permissions: a new file is created 0666 & ~umask, as `open` and shell redirections make them;
an existing file that is overwritten keeps its mode.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import socket
import stat
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


class OutputError(OSError):
    """An output that could not be written (a full disk, a read-only directory...); the message
    names the file. Nothing is left under the final name or beside it."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _temporary_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.ggtune-{_host()}-{os.getpid()}-{secrets.token_hex(4)}{PARTIAL_SUFFIX}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Removes the temporaries (files or directories) left beside ``final`` by ggtune processes
    that no longer run; returns what it removed."""
    pattern = re.compile(re.escape(f".{final.name}.ggtune-{_host()}-") + r"(\d+)-[0-9a-f]+"
                         + re.escape(PARTIAL_SUFFIX) + "$")
    removed = []
    try:
        entries = list(os.scandir(final.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if not match or int(match.group(1)) == os.getpid() or _pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _final_path(path: str | os.PathLike) -> Path:
    """The file to replace: a symbolic link's target (as `cp` writes through a link)."""
    final = Path(path)
    if final.is_symlink():
        final = Path(os.path.realpath(final))
    return final


def _mode_for(final: Path) -> int:
    """An existing file's permission bits, else 0666 & ~umask."""
    try:
        return stat.S_IMODE(os.stat(final).st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def current_umask() -> int:
    """The process's umask, read from /proc (Linux 4.7+) where it can be: setting it to read it
    back would change it for a moment under every other thread of the process."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: the only way left to read it; set back at once
    os.umask(mask)
    return mask


def _open_unnamed(directory: Path) -> int | None:
    """An O_TMPFILE descriptor in ``directory``, or None where the kernel or filesystem has none."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(directory, flag | os.O_RDWR, 0o666)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return None
        raise


_NO_LINKAT: set[int] = set()  # st_dev of filesystems where an unnamed inode cannot be linked


def _open_unnamed_if_linkable(directory: Path) -> int | None:
    try:
        if os.stat(directory).st_dev in _NO_LINKAT:
            return None
    except OSError:
        return None
    return _open_unnamed(directory)


def _name_unnamed(fd: int, named: Path) -> None:
    """Gives the O_TMPFILE inode ``fd`` the name ``named``: linkat, or else a copy."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        AT_FDCWD, AT_EMPTY_PATH = -100, 0x1000
        if libc.linkat(fd, b"", AT_FDCWD, os.fsencode(named), AT_EMPTY_PATH) == 0:
            return
    try:
        os.link(f"/proc/self/fd/{fd}", named, follow_symlinks=True)
        return
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
    _NO_LINKAT.add(os.fstat(fd).st_dev)
    out = os.open(named, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        while os.sendfile(out, fd, None, 1 << 24):
            pass
        os.fchmod(out, stat.S_IMODE(os.fstat(fd).st_mode))
        os.fsync(out)
    except BaseException:
        os.unlink(named)
        raise
    finally:
        os.close(out)


def _output_error(final: Path, e: OSError) -> OutputError:
    reason = e.strerror or f"the write stopped short ({e}): is the disk full or a file size limit reached?"
    return OutputError(e.errno, f"{final}: cannot write: {reason}" + (
        " (the disk is full; nothing was written)" if e.errno == errno.ENOSPC else ""))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a path to write the whole output to; on success it appears under ``path`` at once
    (fsynced, mode as described above), on any exception nothing is left. An OSError on the way
    (ENOSPC, EROFS, EACCES...) becomes an OutputError naming ``path``."""
    final = _final_path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(final)
        fd = _open_unnamed_if_linkable(final.parent)
    except OSError as e:
        raise _output_error(final, e) from None
    named = None
    try:
        if fd is None:
            named = _temporary_name(final)
            fd = os.open(named, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            yield named
        else:
            yield Path(f"/proc/self/fd/{fd}")
        os.fchmod(fd, _mode_for(final))
        os.fsync(fd)
        if named is None:
            named = _temporary_name(final)
            _name_unnamed(fd, named)
        os.replace(named, final)
        named = None
        _fsync_directory(final.parent)
    except OSError as e:
        raise _output_error(final, e) from None
    finally:
        os.close(fd)
        if named is not None:
            with contextlib.suppress(OSError):
                os.unlink(named)


@contextlib.contextmanager
def temporary_directory(final: str | os.PathLike):
    """A new directory beside ``final`` (named as the temporaries above, mode 0777 & ~umask),
    removed on any exception; the caller renames it into place."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = _temporary_name(final)
    os.mkdir(tmp, 0o777)  # the umask applies
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_directory(directory: Path) -> None:
    """The rename itself survives a power cut once the directory is synced."""
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
