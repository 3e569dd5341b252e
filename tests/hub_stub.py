"""The Hub's network edge replaced: `HfApi.create_repo`, `create_branch` and `upload_folder` record each call and
copy what `upload_folder` would upload into a local "remote" folder, instead of reaching huggingface.co.

In a test: `HubStub(tmp_path / "remote").install(monkeypatch.setattr)`.
Around a script: `python tests/hub_stub.py REMOTE_DIR hfseg/finetune.py --flags ...` (calls: REMOTE_DIR/calls.jsonl).
"""

from __future__ import annotations

import hashlib
import json
import runpy
import shutil
import sys
from pathlib import Path

import httpx2
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.hf_api import CommitInfo, RepoUrl
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

ENDPOINT = "https://huggingface.co"
STUB_USER = "stub-user"


def http_error(status: int, method: str = "POST") -> HfHubHTTPError:
    """The error huggingface_hub raises for a Hub answer with this status."""
    response = httpx2.Response(status, request=httpx2.Request(method, f"{ENDPOINT}/api/stub"))
    return HfHubHTTPError(f"{status} Server Error for url: {ENDPOINT}/api/stub", response=response)


def token_digest(token) -> str | None:
    return hashlib.sha256(token.encode()).hexdigest() if isinstance(token, str) else None


class HubStub:
    """Records calls in `self.calls` (and `remote/calls.jsonl`); `failures[method]` lists errors raised by the next
    calls of that method, one per call, before it succeeds."""

    def __init__(self, remote: str | Path, failures: dict[str, list[Exception]] | None = None):
        self.remote = Path(remote)
        self.remote.mkdir(parents=True, exist_ok=True)
        self.failures = {name: list(errors) for name, errors in (failures or {}).items()}
        self.calls: list[dict] = []

    def _record(self, method: str, **details) -> None:
        call = {"method": method, **details}
        self.calls.append(call)
        with open(self.remote / "calls.jsonl", "a") as file:
            file.write(json.dumps(call) + "\n")
        if self.failures.get(method):
            raise self.failures[method].pop(0)

    def calls_of(self, method: str) -> list[dict]:
        return [call for call in self.calls if call["method"] == method]

    def install(self, setattr_) -> HubStub:
        stub = self

        def create_repo(api, repo_id, *, token=None, private=None, exist_ok=False, **kwargs):
            full_id = repo_id if "/" in repo_id else f"{STUB_USER}/{repo_id}"
            kind = {name: kwargs[name] for name in ("repo_type", "space_sdk") if kwargs.get(name)}
            stub._record(
                "create_repo", repo_id=full_id, private=private, exist_ok=exist_ok, token=token_digest(token), **kind
            )
            return RepoUrl(f"{ENDPOINT}/{full_id}", endpoint=ENDPOINT)

        def create_branch(api, repo_id, *, branch, token=None, exist_ok=False, **kwargs):
            stub._record("create_branch", repo_id=repo_id, branch=branch, token=token_digest(token))

        def upload_folder(
            api, *, repo_id, folder_path, revision=None, allow_patterns=None, ignore_patterns=None,
            delete_patterns=None, commit_message=None, token=None, **kwargs,
        ):  # fmt: skip
            folder = Path(folder_path)
            ignore = list(ignore_patterns or []) if not isinstance(ignore_patterns, str) else [ignore_patterns]
            everything = sorted(p.relative_to(folder).as_posix() for p in folder.glob("**/*") if p.is_file())
            files = list(
                filter_repo_objects(
                    everything, allow_patterns=allow_patterns, ignore_patterns=ignore + DEFAULT_IGNORE_PATTERNS
                )
            )
            stub._record(
                "upload_folder", repo_id=repo_id, revision=revision, files=files, delete_patterns=delete_patterns,
                commit_message=commit_message, token=token_digest(token),
                **({"repo_type": kwargs["repo_type"]} if kwargs.get("repo_type") else {}),
            )  # fmt: skip
            # A Space lives apart from the model of the same name, as on the Hub (huggingface.co/spaces/NAME).
            spaces = "spaces" if kwargs.get("repo_type") == "space" else ""
            target = stub.remote / spaces / repo_id / (revision or "main")
            for name in files:
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / name, target / name)
            return CommitInfo(
                commit_url=f"{ENDPOINT}/{repo_id}/commit/{'0' * 40}",
                commit_message=commit_message or "",
                commit_description="",
                oid="0" * 40,
            )

        setattr_(HfApi, "create_repo", create_repo)
        setattr_(HfApi, "create_branch", create_branch)
        setattr_(HfApi, "upload_folder", upload_folder)
        # The stub answers in place of the Hub, so the reachability check (hfseg's one network probe) says it is up.
        import hfseg.hub.network

        setattr_(hfseg.hub.network, "hub_offline", lambda: False)
        setattr_(hfseg.hub.network, "hub_reachable", lambda timeout=3.0: True)
        return self


def read_calls(remote: str | Path) -> list[dict]:
    path = Path(remote) / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


if __name__ == "__main__":
    remote, script, *arguments = sys.argv[1:]
    HubStub(remote).install(setattr)
    sys.argv = [script, *arguments]
    runpy.run_path(script, run_name="__main__")
