"""Checkpoints and outputs that survive crashes: atomic writes, complete-checkpoint lookup, resume, output-dir guard.

A checkpoint is written into `output_dir/.hfseg-staging/checkpoint-N` and renamed to `output_dir/checkpoint-N`
only once every file is on disk, so a `checkpoint-N` directory is always complete. The output dir itself carries
`INCOMPLETE_MARKER` from the start of a run until its last output is written.
"""

from __future__ import annotations

import copy
import errno
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from hfseg.errors import HfsegError, require_writable_dir

logger = logging.getLogger(__name__)

STAGING_DIR_NAME = ".hfseg-staging"
INCOMPLETE_MARKER = "HFSEG_RUN_INCOMPLETE.txt"
TRAINER_STATE_NAME = "trainer_state.json"
TRAINING_ARGS_NAME = "training_args.bin"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
#: Files that show a directory holds a run (hfseg's or a plain Trainer's).
RUN_FILES = ("hfseg_config.yaml", "model.safetensors", "config.json", TRAINER_STATE_NAME, INCOMPLETE_MARKER)
#: What a run writes into its output dir; `--overwrite_output_dir` moves these (and the checkpoints) aside.
RUN_OUTPUTS = (
    *RUN_FILES,
    TRAINING_ARGS_NAME,
    "model.safetensors.index.json",
    "preprocessor_config.json",
    "all_results.json",
    "eval_results.json",
    "train_results.json",
    "predictions.png",
    "training_curves.png",
    "README.md",
    "runs",
    "trainable_parameters.json",
    "skipped_samples.txt",
    "adapter",
)
PREVIOUS_RUN_DIR = ".hfseg-previous-run"
RESUME_LATEST = ("auto", "true", "last", "latest")
NO_RESUME = (None, False, "", "false", "False", "none", "None")
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


# --- which checkpoints can be resumed from ---


def missing_checkpoint_files(path: str | Path) -> list[str]:
    """What a checkpoint directory lacks to be resumed from (empty when complete)."""
    path = Path(path)
    if not path.is_dir():
        return ["the directory itself"]
    missing = [] if (path / TRAINER_STATE_NAME).is_file() else [TRAINER_STATE_NAME]
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        missing.append("model.safetensors")
    return missing


def safetensors_problem(path: str | Path) -> str | None:
    """Why a safetensors file cannot be loaded (truncated, unreadable header), or None when it is whole.

    Reads only the header: the file must be as long as the header says its tensors are.
    """
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        return f"{path.name} is truncated ({size} bytes)"
    with open(path, "rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        if 8 + header_size > size:
            return f"{path.name} is truncated ({size} bytes, its header alone needs {8 + header_size})"
        try:
            header = json.loads(handle.read(header_size))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return f"{path.name} has an unreadable header"
    expected = 8 + header_size + end
    if size < expected:
        return f"{path.name} is truncated ({size} of {expected} bytes)"
    return None


def weight_files(path: str | Path) -> list[Path]:
    """The safetensors files holding a checkpoint's weights (the shards of a sharded save)."""
    path = Path(path)
    files = [path / name for name in WEIGHT_FILES if name.endswith(".safetensors") and (path / name).is_file()]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError):
            shards = [index.name]  # reported as unreadable below
        files += [path / shard for shard in shards]
    return files


def damaged_checkpoint_files(path: str | Path) -> list[str]:
    """What is wrong with the files a checkpoint has (truncated weights, unreadable trainer state); empty if none."""
    path = Path(path)
    problems = []
    for file in weight_files(path):
        if not file.is_file():
            problems.append(f"{file.name} is missing")
        elif file.suffix != ".safetensors":
            problems.append(f"{file.name} is unreadable")
        elif (problem := safetensors_problem(file)) is not None:
            problems.append(problem)
    state = path / TRAINER_STATE_NAME
    if state.is_file():
        try:
            json.loads(state.read_text())
        except (ValueError, UnicodeDecodeError):
            problems.append(f"{TRAINER_STATE_NAME} is not valid JSON")
    return problems


def checkpoint_step(path: str | Path) -> int | None:
    match = _CHECKPOINT_NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def complete_checkpoints(output_dir: str | Path, below: int | None = None) -> Iterator[Path]:
    """The `checkpoint-N` dirs in `output_dir` that can be resumed from, highest N first (only N < `below` when
    given); incomplete or damaged ones are skipped with a warning that says why."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return
    candidates = sorted(
        (path for path in output_dir.iterdir() if checkpoint_step(path) is not None and path.is_dir()),
        key=checkpoint_step,
        reverse=True,
    )
    for path in candidates:
        if below is not None and checkpoint_step(path) >= below:
            continue
        missing = missing_checkpoint_files(path)
        if missing:
            logger.warning("skipping incomplete checkpoint %s (missing %s)", path, ", ".join(missing))
            continue
        damaged = damaged_checkpoint_files(path)
        if damaged:
            logger.warning("skipping damaged checkpoint %s (%s); looking for an earlier one", path, "; ".join(damaged))
            continue
        yield path


def latest_complete_checkpoint(output_dir: str | Path, below: int | None = None) -> Path | None:
    """The `checkpoint-N` in `output_dir` with the highest N that is complete and undamaged (N < `below` if given)."""
    return next(complete_checkpoints(output_dir, below), None)


def resolve_resume(resume_from_checkpoint: str | bool | None, output_dir: str | Path) -> str | None:
    """`--resume_from_checkpoint` -> a checked checkpoint path, or None to start from scratch.

    `auto`: the latest complete checkpoint in `output_dir` (a damaged one, e.g. with truncated weights, is skipped
    for the one before it), or a fresh start when there is none (handy for jobs that are requeued).
    `true`/`last`/`latest`: the same, but there must be one. A path: it must be a complete, undamaged checkpoint
    directory (weights as safetensors and trainer_state.json); nothing else is loaded.
    """
    if resume_from_checkpoint in NO_RESUME:
        return None
    value = str(resume_from_checkpoint)
    if value.lower() in RESUME_LATEST:
        found = latest_complete_checkpoint(output_dir)
        if found is not None:
            logger.info("resuming from %s", found)
            return str(found)
        if value.lower() == "auto":
            logger.info("--resume_from_checkpoint auto: no complete checkpoint in %s, starting afresh", output_dir)
            return None
        raise HfsegError(
            f"--resume_from_checkpoint {value}: no complete checkpoint-N directory in {output_dir}; "
            "use --resume_from_checkpoint auto to start from scratch when there is none"
        )
    path = Path(value).expanduser()
    missing = missing_checkpoint_files(path)
    if missing:
        raise HfsegError(
            f"--resume_from_checkpoint {value} is not a complete checkpoint directory (missing {', '.join(missing)}); "
            f"pass a checkpoint-N directory written by hfseg, or --resume_from_checkpoint auto"
        )
    damaged = damaged_checkpoint_files(path)
    if damaged:
        step = checkpoint_step(path)
        previous = latest_complete_checkpoint(path.parent, below=step) if step is not None else None
        fix = (
            f"resume from the checkpoint before it with --resume_from_checkpoint {previous}"
            if previous is not None
            else f"there is no earlier complete checkpoint in {path.parent}; rerun without --resume_from_checkpoint"
        )
        raise HfsegError(f"--resume_from_checkpoint {value} is damaged: {'; '.join(damaged)}; {fix}")
    return str(path)


def non_finite_weight(path: str | Path) -> str | None:
    """The first weight of a checkpoint holding NaN/inf (`name in file`), or None when all are finite.

    Reads one tensor at a time, so memory stays at the largest tensor.
    """
    from safetensors import safe_open

    for file in weight_files(path):
        with safe_open(str(file), framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensor = weights.get_tensor(name)
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    return f"{name} in {file.name}"
    return None


def load_checkpoint_weights(model, checkpoint: str | Path) -> None:
    """Load a checkpoint's safetensors weights into `model` in place; every key must match.

    transformers 5 saves some models under renamed keys (SegFormer's legacy names) and Trainer's own resume
    loads the raw file with `strict=False`, so the weights are silently not loaded; `from_pretrained` maps the
    names back.
    """
    loaded = type(model).from_pretrained(str(checkpoint), config=model.config, use_safetensors=True)
    model.load_state_dict(loaded.state_dict(), strict=True)


# --- the output dir: one run each, marked incomplete until done ---


def run_files_in(output_dir: str | Path) -> list[str]:
    """Names in `output_dir` that belong to a run (checkpoints, weights, configs, the incomplete marker)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    return sorted(
        path.name for path in output_dir.iterdir() if path.name in RUN_FILES or checkpoint_step(path) is not None
    )


def starts_over(training_args) -> bool:
    """Whether this run replaces the run its output dir holds: `--overwrite_output_dir` is set, the dir holds a run,
    and this is not a `--resume_from_checkpoint` of an unfinished run there (a requeued job whose command, like the
    demo recipe, also sets `--overwrite_output_dir` continues its own run)."""
    output_dir = Path(training_args.output_dir)
    if not training_args.overwrite_output_dir or not run_files_in(output_dir):
        return False
    resumes = training_args.resume_from_checkpoint not in NO_RESUME
    return not (resumes and (output_dir / INCOMPLETE_MARKER).exists())


def prepare_output_dir(training_args) -> str | None:
    """Check `output_dir` before anything is loaded and resolve the checkpoint to resume from; writes nothing
    (`mark_incomplete` does, once the data and model are ready).

    Refuses an output dir that already holds another run unless `--overwrite_output_dir` is set or the run
    resumes from a checkpoint inside it. With `--overwrite_output_dir` the run starts afresh (see `starts_over`):
    `--resume_from_checkpoint auto` finds nothing of the previous run, whose files `mark_incomplete` moves aside.

    Returns:
        The checkpoint directory to resume from, or None.
    """
    output_dir = Path(training_args.output_dir)
    if starts_over(training_args):
        value = str(training_args.resume_from_checkpoint)
        if value.lower() == "auto" or training_args.resume_from_checkpoint in NO_RESUME:
            return None
        if value.lower() in RESUME_LATEST or output_dir.resolve() in Path(value).expanduser().resolve().parents:
            raise HfsegError(
                f"--resume_from_checkpoint {value} asks to continue the finished run in {output_dir}, but "
                "--overwrite_output_dir starts a new one there; pass --overwrite_output_dir false to continue it, or "
                "drop --resume_from_checkpoint to start afresh"
            )
        return resolve_resume(value, output_dir)  # another run's checkpoint, outside this output dir
    resume = resolve_resume(training_args.resume_from_checkpoint, output_dir)
    if training_args.process_index != 0:  # the main process checks and marks (others would see its marker)
        return resume
    resumes_here = resume is not None and Path(resume).resolve().parent == output_dir.resolve()
    # `auto` after a crash before the first checkpoint: the unfinished run is started again
    restarts_unfinished = (
        str(training_args.resume_from_checkpoint).lower() == "auto" and (output_dir / INCOMPLETE_MARKER).exists()
    )
    require_writable_dir(output_dir, "--output_dir")  # not after the data and model are loaded
    existing = run_files_in(output_dir)
    if existing and not (resumes_here or restarts_unfinished or training_args.overwrite_output_dir):
        shown = ", ".join(existing[:5]) + (", ..." if len(existing) > 5 else "")
        raise HfsegError(
            f"--output_dir {output_dir} already holds a run ({shown}); pass --resume_from_checkpoint auto to continue "
            "it, --overwrite_output_dir to write over it, or choose another --output_dir"
        )
    return resume


def move_previous_run(output_dir: str | Path) -> Path:
    """Move the files and checkpoints of the run in `output_dir` into `output_dir/.hfseg-previous-run` (replacing
    the run kept there before), so that nothing of it is resumed into, or mixed with, the new run."""
    output_dir = Path(output_dir)
    previous = output_dir / PREVIOUS_RUN_DIR
    names = sorted(
        path.name for path in output_dir.iterdir() if path.name in RUN_OUTPUTS or checkpoint_step(path) is not None
    )
    if previous.exists():
        shutil.rmtree(previous)
    previous.mkdir()
    for name in names:
        os.replace(output_dir / name, previous / name)
    logger.warning(
        "--overwrite_output_dir: this run starts afresh; moved the previous run's %s to %s (deleting the run kept "
        "there before), so none of its checkpoints can be resumed into this run",
        ", ".join(names),
        previous,
    )
    return previous


def mark_incomplete(training_args) -> None:
    """Create `output_dir` with the incomplete marker (removed by `mark_complete`); move a replaced run aside
    (`--overwrite_output_dir`); clear a crashed save's staging dir (never a complete checkpoint). Main process only."""
    if training_args.process_index != 0:
        return
    output_dir = Path(training_args.output_dir)
    if starts_over(training_args):
        move_previous_run(output_dir)
    staging = output_dir / STAGING_DIR_NAME
    if staging.exists():
        logger.warning("removing %s left by an interrupted save (never a complete checkpoint)", staging)
        shutil.rmtree(staging, ignore_errors=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / INCOMPLETE_MARKER).write_text(
        "This run has not finished: files in this directory may be missing or partial.\n"
        "Resume it with the same command plus `--resume_from_checkpoint auto`.\n"
        "hfseg deletes this file after the last output is written.\n"
    )


def mark_complete(output_dir: str | Path) -> None:
    """Remove the incomplete marker: every output of the run is on disk."""
    (Path(output_dir) / INCOMPLETE_MARKER).unlink(missing_ok=True)


def check_output_complete(path: str | Path) -> None:
    """Raise when `path` is an output dir of a run that did not finish (for tools that load a trained model)."""
    if (Path(path) / INCOMPLETE_MARKER).exists():
        raise HfsegError(
            f"{path} holds a run that did not finish ({INCOMPLETE_MARKER} is there); resume it with "
            "--resume_from_checkpoint auto, or load one of its checkpoint-N directories"
        )


def check_saved_model(path: str | Path, flag: str = "--model") -> None:
    """Raise when a saved model directory lacks `config.json`, has no weights, or has a weights file that is cut
    short or not safetensors (transformers would report the first as a missing `model_type` key, the others with a
    traceback)."""
    path = Path(path)
    present = sorted(file.name for file in path.iterdir()) if path.is_dir() else []
    shown = ", ".join(present[:8]) + (", ..." if len(present) > 8 else "") if present else "nothing"
    if not (path / "config.json").is_file():
        raise HfsegError(
            f"{flag} {path} has no config.json (found: {shown}); pass the output dir of a finished hfseg finetune "
            "run or one of its checkpoint-N directories, which hold config.json next to model.safetensors"
        )
    weights = sorted(path.glob("*.safetensors"))
    if not weights and not (path / "pytorch_model.bin").is_file():
        raise HfsegError(
            f"{flag} {path} has no model weights (no model.safetensors; found: {shown}); copy the run's "
            "model.safetensors there again, or load one of its checkpoint-N directories"
        )
    for file in weights:
        if (problem := safetensors_problem(file)) is not None:
            raise HfsegError(
                f"{file} is truncated or not a safetensors file ({problem}); copy it again from where the run was "
                "trained, or load one of the run's checkpoint-N directories"
            )


# --- atomic writes ---


def current_umask() -> int:
    """The process umask (os has no getter: set it and put it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _settle_tree(path: Path) -> None:
    """Give every file under `path` the mode the umask allows, then flush it to disk.

    safetensors writes `model.safetensors` through a private temp file (mode 0600) that it renames into place;
    every other file Trainer writes gets 0666 & ~umask, and so must the weights, or nobody else can load them.
    """
    mode = 0o666 & ~current_umask()
    for file in path.rglob("*"):
        if file.is_file():
            os.chmod(file, mode)
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: How torch's zip writer reports a failed write: it keeps no errno (`enforce fail at inline_container.cc`).
_TORCH_WRITE_FAILURE = re.compile(r"inline_container|PytorchStreamWriter|file write failed|unexpected pos")
#: How safetensors (Rust's io::Error) reports one: `I/O error: No space left on device (os error 28)`.
_OS_ERROR_NUMBER = re.compile(r"\(os error (\d+)\)")


def write_errno(error: BaseException, where: str | Path) -> int | None:
    """The errno behind a failed write, also when torch or safetensors wrap it in their own exception type.

    torch's zip writer keeps no errno, so a full file system (ENOSPC) or a file-size limit (EFBIG, `ulimit -f`)
    is told from `where`'s free space and the process's RLIMIT_FSIZE.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno:
            return error.errno
        match = _OS_ERROR_NUMBER.search(str(error))
        if match:
            return int(match.group(1))
        if isinstance(error, RuntimeError) and _TORCH_WRITE_FAILURE.search(str(error)):
            return _probable_write_errno(where)
        error = error.__cause__ or error.__context__
    return None


def _probable_write_errno(where: str | Path) -> int:
    import resource

    path = Path(where)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        stats = os.statvfs(path)
        if stats.f_bavail * stats.f_frsize < 64 * 2**20:  # less than a small checkpoint's worth left
            return errno.ENOSPC
    except OSError:
        pass
    if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
        return errno.EFBIG
    return errno.EIO


def disk_error(error: BaseException, what: str, where: str | Path) -> HfsegError | None:
    """An `HfsegError` explaining a full disk, a quota or a file-size limit, or None for other errors."""
    if isinstance(error, HfsegError):
        return None
    number = write_errno(error, where)
    resume = "earlier checkpoints are intact: {fix} and rerun with --resume_from_checkpoint auto"
    if number in (errno.ENOSPC, errno.EDQUOT):
        fix = resume.format(fix="free some space (or lower --save_total_limit)")
        return HfsegError(f"no space left on the device while saving {what} to {where} ({os.strerror(number)}); {fix}")
    if number == errno.EFBIG:
        fix = resume.format(fix="raise the limit (`ulimit -f unlimited`)")
        return HfsegError(
            f"a file size limit (ulimit -f) stopped saving {what} to {where} ({os.strerror(number)}); {fix}"
        )
    if number == errno.EIO:
        fix = resume.format(fix="check the free space (`df`) and the file size limit (`ulimit -f`)")
        return HfsegError(f"writing {what} to {where} failed ({str(error).strip()[:200]}); {fix}")
    return None


def save_checkpoint_atomically(trainer, save_checkpoint, model, trial) -> None:
    """Run Trainer's `_save_checkpoint` into a staging dir, then rename the finished checkpoint into place.

    `trainer._staging_run_dir` redirects `Trainer._get_output_dir` while the checkpoint is written.
    """
    run_dir = Path(trainer._get_output_dir(trial=trial))
    name = f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
    staging_root = run_dir / STAGING_DIR_NAME
    staged, final = staging_root / name, run_dir / name
    trainer._staging_run_dir = str(staging_root)
    try:
        save_checkpoint(model, trial)
        trainer.accelerator.wait_for_everyone()
        if trainer.args.should_save:
            _fix_best_checkpoint(trainer, run_dir, staged)
            scrub_tokens(staged, trainer.args)
            _settle_tree(staged)
            if final.exists():  # the same step saved again: the new one wins
                shutil.rmtree(final)
            os.replace(staged, final)
            _fsync_dir(run_dir)
            shutil.rmtree(staging_root, ignore_errors=True)
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=trainer.args.save_total_limit,
                best_model_checkpoint=trainer.state.best_model_checkpoint,
                use_mtime=True,
            )
    except BaseException as error:
        # explained before the staging dir is removed: that frees the space a full disk is recognised by
        explained = disk_error(error, f"checkpoint {name}", run_dir) if isinstance(error, Exception) else None
        shutil.rmtree(staging_root, ignore_errors=True)
        if explained is not None:
            raise explained from error
        raise
    finally:
        trainer._staging_run_dir = None
    trainer.accelerator.wait_for_everyone()


def _fix_best_checkpoint(trainer, run_dir: Path, staged: Path) -> None:
    """Point `best_model_checkpoint` at the final location (Trainer saw only the staging dir)."""
    state = trainer.state
    if not state.best_global_step:
        return
    best = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{state.best_global_step}"
    if state.best_global_step == state.global_step or best.exists():
        state.best_model_checkpoint = str(best)
        if (staged / TRAINER_STATE_NAME).exists():
            state.save_to_json(str(staged / TRAINER_STATE_NAME))


def save_final_model(trainer, output_dir: str | Path | None = None) -> None:
    """`trainer.save_model()` into a temp dir, then each file moved into `output_dir` with an atomic rename."""
    output_dir = Path(output_dir or trainer.args.output_dir)
    temp = output_dir / STAGING_DIR_NAME / "final"
    try:
        trainer.save_model(str(temp), _internal_call=True)  # no Hub push from the temp dir
        if trainer.args.should_save:
            scrub_tokens(temp, trainer.args)
            _settle_tree(temp)
            for file in temp.iterdir():
                os.replace(file, output_dir / file.name)
            _fsync_dir(output_dir)
    except Exception as error:
        explained = disk_error(error, "the final model", output_dir)
        if explained is not None:
            raise explained from error
        raise
    finally:
        if trainer.args.should_save:
            shutil.rmtree(output_dir / STAGING_DIR_NAME, ignore_errors=True)


# --- no credentials on disk ---


def scrub_tokens(directory: str | Path, training_args) -> None:
    """Rewrite `training_args.bin` in `directory` with every `*_token` field blanked (Trainer pickles them as is)."""
    path = Path(directory) / TRAINING_ARGS_NAME
    token_fields = [name for name, value in vars(training_args).items() if name.endswith("_token") and value]
    if not path.exists() or not token_fields:
        return
    scrubbed = copy.copy(training_args)
    for name in token_fields:
        setattr(scrubbed, name, None)
    torch.save(scrubbed, path)
