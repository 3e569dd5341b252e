"""The one network edge check: is the Hub reachable? Lets hfseg fail in seconds with a clear message
instead of minutes of retries and a long traceback."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from hfseg.errors import HfsegError


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """True when a TCP connection to the Hub endpoint opens within `timeout` seconds."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def is_local(path_or_id: str) -> bool:
    return Path(path_or_id).expanduser().exists()


def require_hub(flag: str, name: str) -> None:
    """Raise a one-paragraph `HfsegError` when `name` (given as `flag`) must come from the Hub and the Hub is
    unreachable.

    With HF_HUB_OFFLINE=1 nothing is checked: the libraries then read their caches only.
    """
    if is_local(name) or hub_offline() or hub_reachable():
        return
    raise HfsegError(_unavailable_message([(flag, name)]))


def require_hub_for_push(flag: str) -> None:
    """Raise a one-paragraph `HfsegError` before training when the push at its end cannot work: HF_HUB_OFFLINE is
    set or the Hub endpoint does not answer."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if hub_offline():
        reason = "HF_HUB_OFFLINE is set"
    elif not hub_reachable():
        reason = f"the Hugging Face Hub ({endpoint}) cannot be reached"
    else:
        return
    raise HfsegError(
        f"{flag}: {reason}, so the finished run could not be pushed; stopped before training. Unset HF_HUB_OFFLINE "
        "or restore the connection, or train without --push_to_hub and publish the run later with "
        "`hfseg push OUTPUT_DIR --repo_id NAME/MODEL`."
    )


def hub_sources(model_args, data_args) -> list[tuple[str, str]]:
    """(flag, Hub id) of every source a finetune run would load from the Hub, in the order it loads them."""
    sources = []
    if data_args.dataset_name not in (None, "", "synthetic") and not (data_args.data_dir and data_args.layout):
        sources.append(("--dataset_name", data_args.dataset_name))
    if model_args.model_type:
        sources.append(("--backbone_name_or_path", getattr(model_args, "backbone_name_or_path", None)))
    else:
        sources.append(("--model_name_or_path", model_args.model_name_or_path))
    sources.append(("--tokenizer_name_or_path", getattr(model_args, "tokenizer_name_or_path", None)))
    return [(flag, name) for flag, name in sources if name and not is_local(name) and _is_repo_id(name)]


def _is_repo_id(name: str) -> bool:
    """`org/name` or `name`; a path that does not exist (`/data/x`, `./x`) is left to its loader's message."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def require_hub_sources(sources: list[tuple[str, str]], revision: str = "main") -> None:
    """Before anything loads: one `HfsegError` naming every (flag, Hub id) in `sources` that cannot load, with
    the local alternative for each: all of them when the Hub is unreachable, those not in the Hugging Face cache
    with HF_HUB_OFFLINE=1."""
    if not sources:
        return
    if hub_offline():
        missing = [(flag, name) for flag, name in sources if not _in_cache(flag, name, revision)]
    else:
        missing = [] if hub_reachable() else sources
    if missing:
        raise HfsegError(_unavailable_message(missing))


def _in_cache(flag: str, name: str, revision: str) -> bool:
    """Whether the libraries can load `name` offline: a model's config.json (a tokenizer's tokenizer_config.json) in
    the Hub cache; a data set in datasets' own cache (what `load_dataset` falls back to with HF_HUB_OFFLINE=1)."""
    if flag == "--dataset_name":
        from datasets.load import CachedDatasetModuleFactory

        if name.count("/") > 1:
            return False
        try:
            CachedDatasetModuleFactory(name).get_module()
        except FileNotFoundError:
            return False
        return True
    from huggingface_hub import try_to_load_from_cache

    file = "tokenizer_config.json" if flag == "--tokenizer_name_or_path" else "config.json"
    return isinstance(try_to_load_from_cache(name, file, revision=revision), str)


def _unavailable_message(missing: list[tuple[str, str]]) -> str:
    named = " and ".join(f"{flag} {name}" for flag, name in missing)
    fixes = [
        "--data_dir DIR --layout NAME (data in its native layout) or --dataset_name a local datasets folder"
        if flag == "--dataset_name"
        else f"{flag} a local checkpoint directory"
        for flag, _ in missing
    ]
    if hub_offline():
        reason, last = (
            "not in the Hugging Face cache and HF_HUB_OFFLINE=1 is set",
            "or unset HF_HUB_OFFLINE once online",
        )
    else:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        reason = f"cannot reach the Hugging Face Hub ({endpoint})"
        last = "or, if the files are already in the Hugging Face cache, set HF_HUB_OFFLINE=1 to use them"
    return f"cannot load {named}: {reason}. Pass {'; and '.join(fixes)}; {last}."
