"""Publish a finished run on the Hugging Face Hub: safetensors weights, config with id2label, image processor,
model card, eval results, pictures and the resolved recipe; transient failures are retried.

hfseg push OUTPUT_DIR --repo_id NAME/MODEL [--private] [--revision BRANCH] [--adapter_only]
    [--with_space [--space_id NAME/SPACE]]

With --adapter_only (a --peft lora run), only the adapter is published: adapter_model.safetensors,
adapter_config.json and a card that names the base model and the peft code that loads it. With --with_space, a
Gradio Space that serves the pushed model follows it.

The token comes from huggingface_hub's usual places (HF_TOKEN, `hf auth login`) and is handed to it only:
hfseg never prints, logs or saves it.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, HTTPError, OfflineModeIsEnabled
from transformers import HfArgumentParser

from hfseg.errors import HfsegError, strip_debug, user_errors_exit
from hfseg.hub.card import CARD_NAME, adapter_card_from_run, card_from_run
from hfseg.hub.network import require_hub_for_push
from hfseg.models.lora import ADAPTER_DIR_NAME
from hfseg.training.checkpoints import check_output_complete, check_saved_model, safetensors_problem

logger = logging.getLogger("hfseg")

# Top-level files of a run that are published; pickles (training_args.bin, optimizer states) never are.
PUSH_PATTERNS = (
    "*.safetensors", "model.safetensors.index.json", "config.json", "preprocessor_config.json",
    "processor_config.json", CARD_NAME, "eval_results.json", "predictions.png", "training_curves.png",
    "hfseg_config.yaml", "tokenizer.json", "tokenizer_config.json",  # OneFormer's CLIP tokenizer
)  # fmt: skip
# Left in the repo root by Trainer's own checkpoint pushes (--hub_strategy every_save); removed by the final push.
STALE_PATTERNS = ["training_args.bin", "pytorch_model*.bin"]
# What --adapter_only publishes, from output_dir/adapter (the card is written there first).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOKEN_HELP = "set HF_TOKEN or run `hf auth login` (a token with write access)"


@dataclass
class PushArguments:
    output_dir: str = field(metadata={"help": "Folder of a finished `hfseg finetune` run (also positional)."})
    repo_id: str = field(metadata={"help": "Hub model repo to push to: NAME/MODEL (created if missing)."})
    private: bool = field(default=False, metadata={"help": "Create the repo private (no effect if it exists)."})
    revision: str | None = field(
        default=None, metadata={"help": "Branch to push to (created from main if missing); default: main."}
    )
    commit_message: str | None = field(default=None, metadata={"help": "Commit message on the Hub."})
    keep_card: bool = field(
        default=False,
        metadata={"help": "Upload README.md as it is instead of rebuilding the card with the repo id in its snippet."},
    )
    adapter_only: bool = field(
        default=False,
        metadata={
            "help": "Push only the LoRA adapter of a --peft lora run (output_dir/adapter) with a card saying how to "
            "load it on its base model with peft, instead of the merged model."
        },
    )
    max_attempts: int = field(default=4, metadata={"help": "Tries per Hub call on transient failures (5xx, network)."})
    retry_delay: float = field(
        default=2.0, metadata={"help": "Seconds before the first retry; doubles after each failed attempt."}
    )
    with_space: bool = field(
        default=False, metadata={"help": "Also push a Gradio Space that serves the model with `hfseg app`."}
    )
    space_id: str | None = field(default=None, metadata={"help": "Space repo for --with_space (default: --repo_id)."})


def files_to_push(output_dir: str | Path) -> list[str]:
    """Names of the top-level files of `output_dir` that a push uploads (sorted).

    Raises:
        HfsegError: when the folder holds no safetensors weights.
    """
    output_dir = Path(output_dir)
    names = sorted(
        path.name
        for path in output_dir.iterdir()
        if path.is_file() and any(fnmatch.fnmatch(path.name, pattern) for pattern in PUSH_PATTERNS)
    )
    if not any(name.endswith(".safetensors") for name in names):
        raise HfsegError(
            f"{output_dir}: no *.safetensors weights to push (only safetensors are published); save the model with "
            "save_pretrained(..., safe_serialization=True) or point at the output_dir of an hfseg finetune run"
        )
    return names


def is_transient(error: BaseException) -> bool:
    """True for failures worth retrying: Hub 5xx/429 answers, dropped connections and timeouts."""
    if isinstance(error, OfflineModeIsEnabled):
        return False
    if isinstance(error, HfHubHTTPError):
        status = getattr(error.response, "status_code", None)
        return status is None or status == 429 or status >= 500
    return isinstance(error, (HTTPError, ConnectionError, TimeoutError))


def with_retries(
    action: Callable, what: str, max_attempts: int = 4, retry_delay: float = 2.0, sleep: Callable = time.sleep
):
    """`action()`, retried up to `max_attempts` times on transient failures with exponential backoff.

    Args:
        sleep: called with the delay in seconds between attempts (tests pass a recorder instead of `time.sleep`).
    """
    for attempt in range(1, max_attempts + 1):
        try:
            return action()
        except Exception as error:
            if attempt == max_attempts or not is_transient(error):
                raise
            delay = retry_delay * 2 ** (attempt - 1)
            logger.warning(
                "%s failed (%s: %s); attempt %d of %d, retrying in %.1f s",
                what, type(error).__name__, _first_line(error), attempt, max_attempts, delay,
            )  # fmt: skip
            sleep(delay)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def adapter_files_to_push(output_dir: str | Path) -> list[str]:
    """The adapter files `--adapter_only` uploads from `output_dir/adapter`, checked to be there and whole.

    Raises:
        HfsegError: the run has no adapter (it was not a --peft lora run), or a file is missing or truncated.
    """
    directory = Path(output_dir) / ADAPTER_DIR_NAME
    if not directory.is_dir():
        raise HfsegError(
            f"--adapter_only: {output_dir} has no {ADAPTER_DIR_NAME}/ folder, so it was not fine-tuned with "
            "--peft lora; push the whole model (drop --adapter_only) or train with --peft lora"
        )
    missing = [name for name in ADAPTER_FILES if not (directory / name).is_file()]
    if missing:
        raise HfsegError(
            f"--adapter_only: {directory} lacks {', '.join(missing)}; it is written at the end of a --peft lora "
            "run, so rerun or resume that run to completion"
        )
    problem = safetensors_problem(directory / "adapter_model.safetensors")
    if problem:
        raise HfsegError(f"--adapter_only: {directory}: {problem}; rerun or resume the --peft lora run")
    return [*ADAPTER_FILES, CARD_NAME]


def retry_command(
    output_dir: str | Path, repo_id: str, private: bool | None, revision: str | None, adapter_only: bool = False
) -> str:
    """The `hfseg push` command line that repeats a push."""
    command = f"hfseg push {output_dir} --repo_id {repo_id}"
    if revision:
        command += f" --revision {revision}"
    if private:
        command += " --private"
    if adapter_only:
        command += " --adapter_only"
    return command


def push_run(
    output_dir: str | Path,
    repo_id: str,
    private: bool | None = None,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    rebuild_card: bool = True,
    max_attempts: int = 4,
    retry_delay: float = 2.0,
    sleep: Callable = time.sleep,
    adapter_only: bool = False,
) -> str:
    """Create `repo_id` (and branch `revision`) if needed and upload the run's publishable files in one commit.

    The card is rebuilt from the run's files so that its usage snippet names `repo_id` (unless `rebuild_card` is
    False). Files already in the local folder are never deleted or moved, whatever happens.

    Args:
        token: default: huggingface_hub's own lookup (HF_TOKEN, then the `hf auth login` file).
        sleep: receives the backoff delays (seconds) between attempts.
        adapter_only: push `output_dir/adapter` (adapter weights, its config and an adapter card) instead.

    Returns:
        The URL of the commit on the Hub.

    Raises:
        HfsegError: no token, nothing to push, or the Hub still failing after the retries; the message names the
            command that retries.
    """
    output_dir = Path(output_dir)
    retry = retry_command(output_dir, repo_id, private, revision, adapter_only)
    if not output_dir.is_dir():
        raise HfsegError(f"{output_dir}: no such folder; pass the output_dir of a finished hfseg finetune run")
    check_output_complete(output_dir)
    if adapter_only:
        files = adapter_files_to_push(output_dir)
        card = adapter_card_from_run(output_dir, adapter_ref=repo_id)  # refuses a base model nobody can load
        folder = output_dir / ADAPTER_DIR_NAME
    else:
        files = files_to_push(output_dir)
        check_saved_model(output_dir, flag="hfseg push")
        folder = output_dir
    token = token or get_token()
    if not token:
        raise HfsegError(f"no Hugging Face token found to push {output_dir}: {TOKEN_HELP}, then `{retry}`")
    card_path = folder / CARD_NAME
    previous_card = card_path.read_bytes() if card_path.is_file() else None
    if adapter_only:  # always rebuilt: peft's own README.md there is an empty template
        card.save(card_path)
    elif rebuild_card:
        card_from_run(output_dir, model_ref=repo_id).save(card_path)
        files = files_to_push(output_dir)
    api = HfApi()
    attempts = {"max_attempts": max_attempts, "retry_delay": retry_delay, "sleep": sleep}
    try:
        commit = _create_and_upload(
            api, folder, repo_id, private, revision, token, commit_message, files, attempts, retry
        )
    except BaseException:
        if rebuild_card or adapter_only:  # a failed push leaves the run's card as it was
            _restore(card_path, previous_card)
        raise
    url = getattr(commit, "commit_url", None) or str(commit)
    logger.info("pushed %s to %s", output_dir, url)
    return url


def _restore(path: Path, content: bytes | None) -> None:
    if content is None:
        path.unlink(missing_ok=True)
    else:
        path.write_bytes(content)


def _create_and_upload(
    api,
    output_dir: Path,
    repo_id,
    private,
    revision,
    token,
    commit_message,
    files,
    attempts,
    retry: str,
    space: bool = False,
):
    """create_repo, create_branch and upload_folder (of `files` in `output_dir`), each retried; Hub failures become
    an `HfsegError` that names the `retry` command. With `space`, the repo is a Gradio Space."""
    kind = {"repo_type": "space"} if space else {}
    try:
        repo_url = with_retries(
            lambda: api.create_repo(
                repo_id,
                token=token,
                private=private,
                exist_ok=True,
                **kind,
                **({"space_sdk": "gradio"} if kind else {}),
            ),
            "create_repo",
            **attempts,
        )
        repo_id = getattr(repo_url, "repo_id", None) or repo_id
        if revision and revision != "main":
            with_retries(
                lambda: api.create_branch(repo_id, branch=revision, token=token, exist_ok=True),
                "create_branch",
                **attempts,
            )
        logger.info("pushing %d files to %s (%s): %s", len(files), repo_id, revision or "main", ", ".join(files))
        return with_retries(
            lambda: api.upload_folder(
                repo_id=repo_id,
                folder_path=output_dir,
                revision=revision,
                allow_patterns=files,
                delete_patterns=STALE_PATTERNS,
                commit_message=commit_message or f"Upload {output_dir.name} with hfseg",
                token=token,
                **kind,
            ),
            "upload_folder",
            **attempts,
        )
    except OfflineModeIsEnabled:
        raise HfsegError(
            f"HF_HUB_OFFLINE is set, so {output_dir} cannot be pushed to {repo_id}; unset it, then `{retry}`"
        ) from None
    except (HTTPError, OSError, ValueError) as error:
        raise HfsegError(
            f"pushing {output_dir} to {repo_id} failed ({type(error).__name__}: {_first_line(error)}); the local "
            f"run in {output_dir} is intact; retry with `{retry}`"
        ) from error


def push_space(repo_id: str, space_id: str, output_dir: str | Path, private: bool | None = None, **attempts) -> str:
    """Push a Gradio Space (`hfseg.hub.space.write_space`) that serves the pushed model `repo_id`.

    Returns:
        The URL of the Space's commit on the Hub.
    """
    import tempfile

    from hfseg.hub.space import SPACE_FILES, write_space

    token = get_token()
    retry = retry_command(output_dir, repo_id, private, None) + f" --with_space --space_id {space_id}"
    if not token:
        raise HfsegError(f"no Hugging Face token found to push the Space {space_id}: {TOKEN_HELP}, then `{retry}`")
    attempts = {"max_attempts": 4, "retry_delay": 2.0, "sleep": time.sleep, **attempts}
    with tempfile.TemporaryDirectory(prefix="hfseg-space-") as space_dir:
        write_space(space_dir, repo_id, title=Path(output_dir).name)
        commit = _create_and_upload(
            HfApi(), Path(space_dir), space_id, private, None, token, f"Space serving {repo_id} with hfseg app",
            list(SPACE_FILES), attempts, retry, space=True,
        )  # fmt: skip
    url = getattr(commit, "commit_url", None) or str(commit)
    logger.info("pushed the Space %s (serving %s): %s", space_id, repo_id, url)
    return url


def prepare_hub_push(training_args) -> None:
    """Before training: move `--hub_token` into this process's HF_TOKEN (where huggingface_hub and Trainer look it
    up) so that training_args.bin, logs and the resolved config never hold it; with `--push_to_hub`, fail now,
    not after training, when no token can be found or the Hub cannot be reached."""
    if training_args.hub_token:
        os.environ["HF_TOKEN"] = training_args.hub_token
        training_args.hub_token = None
    if training_args.push_to_hub and not get_token():
        raise HfsegError(f"--push_to_hub: no Hugging Face token found; {TOKEN_HELP}")
    if training_args.push_to_hub:
        require_hub_for_push("--push_to_hub")  # Trainer creates the repo first thing: offline, a traceback


def push_finished_run(trainer) -> str:
    """After the card and pictures are saved: wait for Trainer's own checkpoint pushes (`--hub_strategy`), then push
    the finished run (`push_run`) to `--hub_model_id` (Trainer's repo), `--hub_revision`, `--hub_private_repo`."""
    in_flight = getattr(trainer, "push_in_progress", None)
    if in_flight is not None:
        in_flight.wait_until_done()
    args = trainer.args
    repo_id = trainer.hub_model_id or args.hub_model_id or Path(args.output_dir).absolute().name
    return push_run(args.output_dir, repo_id, private=args.hub_private_repo, revision=args.hub_revision)


@user_errors_exit
def main(argv: list[str] | None = None) -> str:
    argv = strip_debug(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):  # `hfseg push OUTPUT_DIR ...`
        argv = ["--output_dir", argv[0], *argv[1:]]
    (args,) = HfArgumentParser(PushArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    url = push_run(
        args.output_dir,
        args.repo_id,
        private=args.private or None,
        revision=args.revision,
        commit_message=args.commit_message,
        rebuild_card=not args.keep_card,
        max_attempts=args.max_attempts,
        retry_delay=args.retry_delay,
        adapter_only=args.adapter_only,
    )
    print(f"pushed {args.output_dir} to {url}")
    if args.with_space:
        space_url = push_space(args.repo_id, args.space_id or args.repo_id, args.output_dir, args.private or None,
                               max_attempts=args.max_attempts, retry_delay=args.retry_delay)  # fmt: skip
        print(f"pushed the Space {args.space_id or args.repo_id} to {space_url}")
    return url


if __name__ == "__main__":
    main()
