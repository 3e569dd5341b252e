"""User-facing errors: one short message naming the file/field and the fix, no traceback unless --debug."""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from pathlib import Path


class HfsegError(Exception):
    """An error in the user's input or environment, with a message that says how to fix it.

    `exit_code` and `debug_hint` (whether to suggest --debug) may be overridden by subclasses.
    """

    exit_code = 2
    debug_hint = True


def require_writable_dir(path: str | Path, flag: str) -> None:
    """Raise an `HfsegError` naming `flag` when folder `path` could not be created or written: a file where a folder
    should be, a read-only file system or folder, no permission. Leaves nothing behind (a temporary probe file in
    `path`, or in its nearest existing parent)."""
    path = Path(path).absolute()
    existing = next(parent for parent in [path, *path.parents] if parent.exists())
    if not existing.is_dir():
        raise HfsegError(f"{flag} {path}: {existing} is a file, not a folder; choose another path or move the file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise HfsegError(
            f"{flag} {path}: cannot write in {existing} ({os.strerror(error.errno) if error.errno else error}); "
            "choose a folder you can write to"
        ) from None


def _bare_debug_positions(argv: list[str]) -> list[int]:
    """Positions of a bare `--debug` (TrainingArguments' own `--debug VALUE` takes a value and is left alone)."""
    return [
        i for i, arg in enumerate(argv) if arg == "--debug" and (i + 1 == len(argv) or argv[i + 1].startswith("-"))
    ]


def debug_enabled(argv: list[str] | None = None) -> bool:
    argv = sys.argv if argv is None else argv
    return bool(_bare_debug_positions(argv)) or os.environ.get("HFSEG_DEBUG", "") not in ("", "0")


def strip_debug(argv: list[str]) -> list[str]:
    """`argv` without a bare `--debug` (hfseg's flag for full tracebacks)."""
    drop = set(_bare_debug_positions(argv))
    return [arg for i, arg in enumerate(argv) if i not in drop]


def user_errors_exit(main):
    """Decorator for entry points: an `HfsegError` prints `hfseg: error: ...` and exits 2 (or its `exit_code`)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except HfsegError as error:
            argv = args[0] if args and isinstance(args[0], list) else None  # main(argv) called in-process
            if debug_enabled() or (argv is not None and debug_enabled(argv)):
                raise
            tqdm = sys.modules.get("tqdm")
            if tqdm is not None and getattr(tqdm.tqdm, "_instances", None):  # end a progress bar's line first
                print(file=sys.stderr)
            hint = "\n(run again with --debug for the full traceback)" if error.debug_hint else ""
            print(f"hfseg: error: {error}{hint}", file=sys.stderr)
            sys.exit(error.exit_code)

    return wrapper
