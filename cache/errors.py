"""The exception types a user sees, and the translation of environment faults (full disk, read-only mount,
damaged file) into them, so every fault ends in one line that says what happened, where, and what to do.

Exit statuses of the ``fer`` command (cli.main): 0 done, 1 some clips failed (recorded), 2 bad input or
usage (FerError), 3 an environment fault (FerEnvError), 130 interrupted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator


class FerError(Exception):
    """A problem the user can act on.

    The CLI prints the message on one line (no traceback) and exits with ``exit_code``, so the
    message must say what went wrong and what to do about it.
    """

    exit_code = 2


class FerEnvError(FerError):
    """A fault of the machine rather than of the input: no space, a read-only or forbidden place, a damaged
    store or file. The CLI exits with status 3, so a script can tell it from bad input (2) and failed clips (1)."""

    exit_code = 3


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
READ_ONLY = (errno.EROFS,)
FORBIDDEN = (errno.EACCES, errno.EPERM)
IO_ERROR = (errno.EIO,)
ENV_ERRNOS = NO_SPACE + READ_ONLY + FORBIDDEN + IO_ERROR

# HDF5 (through h5py) reports the errno of a failed system call only inside its message text
_ERRNO_IN_TEXT = re.compile(r"errno\s*=\s*(\d+)")


def errno_of(e: BaseException) -> int | None:
    """The operating-system error number behind ``e`` (OSError, or an h5py error quoting ``errno = N``)."""
    if isinstance(e, OSError) and e.errno:
        return int(e.errno)
    m = _ERRNO_IN_TEXT.search(str(e))
    return int(m.group(1)) if m else None


def _fault_in_chain(e: BaseException) -> BaseException | None:
    """``e``, or the exception it was raised from or while handling (a library's cleanup can raise its own
    error over the OSError that started it), that carries an environment errno."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if errno_of(cur) in ENV_ERRNOS:
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def env_error(e: BaseException, path: str | os.PathLike | None, doing: str,
              fix: str | None = None) -> FerEnvError | None:
    """A one-line FerEnvError for an environment fault ``e`` met while ``doing`` something at ``path``, or None
    when ``e`` is not one (a bug or bad input, left to its own handling). ``fix`` overrides the advice."""
    fault = _fault_in_chain(e)
    if fault is None:
        return None
    code = errno_of(fault)
    where = getattr(fault, "filename", None) or path
    at = f" at {os.path.abspath(where)}" if where else ""
    if code in NO_SPACE:
        what = "the disk quota is exceeded" if code == errno.EDQUOT else "no space is left on the disk"
        default = "free space there (or raise the quota) or choose another location, then rerun the same command"
        return FerEnvError(f"{what}{at} while {doing}: {fix or default}")
    if code in READ_ONLY:
        default = "fer can read from there but not write: give a writable location, or work on a writable copy"
        place = os.path.abspath(where) if where else "the place written to"
        return FerEnvError(f"{place} is on a read-only file system ({doing}): {fix or default}")
    if code in FORBIDDEN:
        default = "fix its permissions, or give a location you may write to"
        return FerEnvError(f"permission denied{at} while {doing}: {fix or default}")
    return FerEnvError(f"input/output error{at} while {doing} (a failing disk or a network file system "
                       f"dropping out): check the disk, then rerun the same command")


@contextlib.contextmanager
def env_faults(path: str | os.PathLike | None, doing: str, fix: str | None = None) -> Iterator[None]:
    """Turn an environment fault raised inside the block into a one-line FerEnvError (see env_error);
    every other exception passes through unchanged."""
    try:
        yield
    except FerError:
        raise
    except (OSError, RuntimeError) as e:
        err = env_error(e, path, doing, fix)
        if err is None:
            raise
        raise err from e
