"""One run per output dir: a lock file held from the output-dir check to the run's last output.

The lock is an OS file lock (`filelock`, flock on Unix): the kernel drops it when the process ends however it ends,
SIGKILL included, so a killed run never blocks the next one.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from hfseg.errors import HfsegError

LOCK_NAME = ".hfseg.lock"


def lock_holder(path: str | Path) -> str:
    """`PID n on host h (since t)` as the holder wrote it into the lock file, or what is known when unreadable."""
    try:
        holder = json.loads(Path(path).read_text())
        return f"PID {holder['pid']} on host {holder['host']} (since {holder['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its PID yet"


@contextlib.contextmanager
def lock_output_dir(training_args) -> Iterator[None]:
    """Hold `output_dir/.hfseg.lock` for the duration of the block; only the main process takes it (the others
    belong to the same run). Released when the block exits, normally, on an error or a signal's exception.

    A folder it created for the lock is removed again when the run wrote nothing else into it.

    Raises:
        HfsegError: another live run holds the lock; names its PID and host.
    """
    if training_args.process_index != 0:
        yield
        return
    output_dir = Path(training_args.output_dir)
    created = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / LOCK_NAME
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise HfsegError(
            f"--output_dir {output_dir} is in use by another run: {lock_holder(path)} holds {path}; wait for it to "
            "finish or stop it, or choose another --output_dir"
        ) from None
    try:
        started = datetime.datetime.now().isoformat(timespec="seconds")
        path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}))
        yield
    finally:
        lock.release()  # the holder line stays: only a live holder's line is ever shown
        if created and [entry.name for entry in output_dir.iterdir()] == [LOCK_NAME]:
            # A run that stopped before writing anything leaves no folder behind (it made it to hold the lock).
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                output_dir.rmdir()
