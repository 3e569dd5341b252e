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


def require_hub(what: str, name: str) -> None:
    """Raise a one-paragraph `HfsegError` when `name` must come from the Hub and the Hub is unreachable.

    With HF_HUB_OFFLINE=1 nothing is checked: the libraries then read their caches only.
    """
    if is_local(name) or hub_offline() or hub_reachable():
        return
    raise HfsegError(
        f"cannot reach the Hugging Face Hub ({os.environ.get('HF_ENDPOINT', 'https://huggingface.co')}) to load "
        f"{what} '{name}'. Point --model_name_or_path at a local checkpoint directory and --dataset_name at a "
        "local datasets folder (or --data_dir DIR --layout NAME for data in its native layout); if the files are "
        "already in the Hugging Face cache, set HF_HUB_OFFLINE=1 to use them."
    )


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
