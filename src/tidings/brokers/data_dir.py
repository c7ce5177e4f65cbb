"""A broker's data directory and files, kept private to the node's user.

Disk I/O (called from the broker's own thread). History holds what applications
published, private channels included: the directory is created ``0700`` and the
database file ``0600``. SQLite creates its WAL and shared-memory files with the
database file's mode, so they are ``0600`` too. A directory that already exists is
left as the operator made it, with one warning if other users may enter it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path
from typing import Final

logger = logging.getLogger(__name__)

DIRECTORY_MODE: Final = 0o700
FILE_MODE: Final = 0o600
_OTHERS: Final = stat.S_IRWXG | stat.S_IRWXO


def create_private_directory(directory: Path) -> bool:
    """Create ``directory`` (and missing parents) with mode ``0700``.

    Returns:
        False if it existed already (left as it is).

    Raises:
        OSError: it cannot be created.
    """
    try:
        directory.mkdir(mode=DIRECTORY_MODE, parents=True)
    except FileExistsError:
        return False
    directory.chmod(DIRECTORY_MODE)  # mkdir's mode is cut by the umask; this is not
    return True


def prepare_private_file(file: Path) -> None:
    """Create ``file``'s directory (``0700``) and ``file`` itself (``0600``), if missing.

    Raises:
        OSError: the directory or file cannot be created.
    """
    directory = file.parent
    if not create_private_directory(directory):
        mode = directory.stat().st_mode
        if mode & _OTHERS:
            logger.warning(
                "data directory %s is open to other users (mode %03o): its files hold "
                "every channel's history; chmod 700 it",
                directory,
                stat.S_IMODE(mode),
            )
    # An empty file is an empty SQLite database; created here, it gets our mode.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
