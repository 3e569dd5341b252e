"""Checkpoints and outputs that survive crashes: atomic writes, complete-checkpoint lookup, resume, output-dir guard.

A checkpoint is written into `output_dir/.hfseg-staging/checkpoint-N` and renamed to `output_dir/checkpoint-N`
only once every file is on disk, so a `checkpoint-N` directory is always complete. The output dir itself carries
`INCOMPLETE_MARKER` from the start of a run until its last output is written.
"""

from __future__ import annotations

import copy
import errno
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from hfseg.errors import HfsegError

logger = logging.getLogger(__name__)

STAGING_DIR_NAME = ".hfseg-staging"
INCOMPLETE_MARKER = "HFSEG_RUN_INCOMPLETE.txt"
TRAINER_STATE_NAME = "trainer_state.json"
TRAINING_ARGS_NAME = "training_args.bin"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
#: Files that show a directory holds a run (hfseg's or a plain Trainer's).
RUN_FILES = ("hfseg_config.yaml", "model.safetensors", "config.json", TRAINER_STATE_NAME, INCOMPLETE_MARKER)
RESUME_LATEST = ("auto", "true", "last", "latest")
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


def checkpoint_step(path: str | Path) -> int | None:
    match = _CHECKPOINT_NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The `checkpoint-N` in `output_dir` with the highest N that is complete; incomplete ones are skipped."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    candidates = sorted(
        (path for path in output_dir.iterdir() if checkpoint_step(path) is not None and path.is_dir()),
        key=checkpoint_step,
        reverse=True,
    )
    for path in candidates:
        missing = missing_checkpoint_files(path)
        if not missing:
            return path
        logger.warning("skipping incomplete checkpoint %s (missing %s)", path, ", ".join(missing))
    return None


def resolve_resume(resume_from_checkpoint: str | bool | None, output_dir: str | Path) -> str | None:
    """`--resume_from_checkpoint` -> a checked checkpoint path, or None to start from scratch.

    `auto`: the latest complete checkpoint in `output_dir`, or a fresh start when there is none (handy for jobs
    that are requeued). `true`/`last`/`latest`: the same, but there must be one. A path: it must be a complete
    checkpoint directory (weights as safetensors and trainer_state.json); nothing else is loaded.
    """
    if resume_from_checkpoint in (None, False, "", "false", "False", "none", "None"):
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
    return str(path)


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


def prepare_output_dir(training_args) -> str | None:
    """Check `output_dir` before anything is loaded and resolve the checkpoint to resume from; writes nothing
    (`mark_incomplete` does, once the data and model are ready).

    Refuses an output dir that already holds another run unless `--overwrite_output_dir` is set or the run
    resumes from a checkpoint inside it.

    Returns:
        The checkpoint directory to resume from, or None.
    """
    output_dir = Path(training_args.output_dir)
    resume = resolve_resume(training_args.resume_from_checkpoint, output_dir)
    if training_args.process_index != 0:  # the main process checks and marks (others would see its marker)
        return resume
    resumes_here = resume is not None and Path(resume).resolve().parent == output_dir.resolve()
    # `auto` after a crash before the first checkpoint: the unfinished run is started again
    restarts_unfinished = (
        str(training_args.resume_from_checkpoint).lower() == "auto" and (output_dir / INCOMPLETE_MARKER).exists()
    )
    existing = run_files_in(output_dir)
    if existing and not (resumes_here or restarts_unfinished or training_args.overwrite_output_dir):
        shown = ", ".join(existing[:5]) + (", ..." if len(existing) > 5 else "")
        raise HfsegError(
            f"--output_dir {output_dir} already holds a run ({shown}); pass --resume_from_checkpoint auto to continue "
            "it, --overwrite_output_dir to write over it, or choose another --output_dir"
        )
    return resume


def mark_incomplete(training_args) -> None:
    """Create `output_dir` with the incomplete marker (removed by `mark_complete`); clear a crashed save's staging
    dir (never a complete checkpoint). Main process only."""
    if training_args.process_index != 0:
        return
    output_dir = Path(training_args.output_dir)
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


def disk_error(error: OSError, what: str, where: str | Path) -> HfsegError | None:
    """An `HfsegError` explaining a full disk or quota, or None for other OS errors."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return HfsegError(
        f"no space left on the device while saving {what} to {where} ({os.strerror(error.errno)}); earlier "
        "checkpoints are intact: free some space (or lower --save_total_limit) and rerun with "
        "--resume_from_checkpoint auto"
    )


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
    except OSError as error:
        shutil.rmtree(staging_root, ignore_errors=True)
        explained = disk_error(error, f"checkpoint {name}", run_dir)
        if explained is not None:
            raise explained from error
        raise
    except BaseException:
        shutil.rmtree(staging_root, ignore_errors=True)
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
    except OSError as error:
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
