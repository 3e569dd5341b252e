"""Interrupted runs resume exactly; checkpoints are atomic; an output dir holds one run; signals save and stop."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, tiny_run_args
from safetensors.torch import load_file

from hfseg.errors import HfsegError
from hfseg.training.checkpoints import (
    INCOMPLETE_MARKER,
    STAGING_DIR_NAME,
    latest_complete_checkpoint,
    resolve_resume,
    run_files_in,
)

FINETUNE = str(ROOT / "hfseg" / "finetune.py")
#: Deterministic on CPU, constant learning rate (so a longer run's first steps equal a shorter run's).
DETERMINISTIC = (
    "--seed", "7", "--full_determinism", "--dataloader_num_workers", "0", "--lr_scheduler_type", "constant",
    "--learning_rate", "0.001", "--save_strategy", "steps", "--save_steps", "2",
)  # fmt: skip


def finetune_env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("HFSEG_DEBUG", None)
    return env


def start(output_dir: Path, *extra: str) -> subprocess.Popen:
    """The entry script in a subprocess; its output goes to `output_dir`.log (a pipe could fill up and block it)."""
    log = open(f"{output_dir}.log", "a")  # noqa: SIM115 - closed by finish()
    process = subprocess.Popen(
        [sys.executable, FINETUNE, *tiny_run_args(output_dir, *DETERMINISTIC, "--disable_tqdm", "true", *extra)],
        stdout=log, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=finetune_env(),
    )  # fmt: skip
    process.log = log
    return process


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    process.wait(timeout=timeout)
    process.log.close()
    return process.returncode, Path(process.log.name).read_text()


def wait_for(predicate, process: subprocess.Popen, timeout: float = 300.0) -> None:
    """Poll the filesystem (bounded) until `predicate()` holds; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"run ended (rc={process.returncode}) first:\n{finish(process)[1][-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.02)


def weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output_dir / "model.safetensors"))


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_weights_and_metrics(tmp_path):
    """Kill -9 mid-epoch after checkpoint-2 (4 steps per epoch), resume with `auto`: same result as no kill."""
    import json

    reference = start(tmp_path / "reference", "--max_steps", "6")
    # The run to kill is given far more steps than it gets (the constant schedule makes them equal up to step 6),
    # so it is surely still training when it is killed.
    killed_dir = tmp_path / "killed"
    killed = start(killed_dir, "--max_steps", "100000")
    wait_for(lambda: latest_complete_checkpoint(killed_dir) is not None, killed)
    killed.send_signal(signal.SIGKILL)
    finish(killed)
    assert (killed_dir / INCOMPLETE_MARKER).exists()
    assert not (killed_dir / "model.safetensors").exists()

    rc, stderr = finish(start(killed_dir, "--max_steps", "6", "--resume_from_checkpoint", "auto"))
    assert rc == 0, stderr[-3000:]
    assert "resuming from" in stderr and "checkpoint-" in stderr
    rc, stderr = finish(reference)
    assert rc == 0, stderr[-3000:]

    expected, resumed = weights(tmp_path / "reference"), weights(killed_dir)
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, resumed[name]), f"{name} differs after resume"
    metrics = [json.loads((path / "eval_results.json").read_text()) for path in (tmp_path / "reference", killed_dir)]
    for key in ("eval_mean_iou", "eval_overall_accuracy", "eval_loss", "eval_per_category_iou"):
        assert metrics[0][key] == metrics[1][key], key
    assert not (killed_dir / INCOMPLETE_MARKER).exists(), "a finished run must drop the incomplete marker"


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
    output_dir = tmp_path / "out"
    process = start(output_dir, "--max_steps", "100000", "--save_steps", "100000")
    log = Path(f"{output_dir}.log")
    wait_for(lambda: "'loss'" in log.read_text(), process)  # training has begun: the first logged loss
    process.send_signal(signal.SIGTERM)
    rc, stderr = finish(process)
    assert rc == 128 + signal.SIGTERM, stderr[-3000:]
    checkpoint = latest_complete_checkpoint(output_dir)
    assert checkpoint is not None, sorted(p.name for p in output_dir.iterdir())
    assert "stopped by SIGTERM" in stderr and "--resume_from_checkpoint auto" in stderr
    assert str(checkpoint) in stderr
    assert "Traceback" not in stderr
    assert (output_dir / INCOMPLETE_MARKER).exists()


# --- fast checks of the pieces ---


def make_checkpoint(path: Path, complete: bool = True) -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"x")
    if complete:
        (path / "trainer_state.json").write_text("{}")
    return path


def test_auto_picks_latest_complete_checkpoint_and_skips_incomplete(tmp_path):
    make_checkpoint(tmp_path / "checkpoint-4")
    make_checkpoint(tmp_path / "checkpoint-10")
    make_checkpoint(tmp_path / "checkpoint-12", complete=False)  # e.g. written by a plain Trainer, then killed
    make_checkpoint(tmp_path / STAGING_DIR_NAME / "checkpoint-14")
    assert resolve_resume("auto", tmp_path) == str(tmp_path / "checkpoint-10")
    assert resolve_resume("True", tmp_path) == str(tmp_path / "checkpoint-10")
    assert resolve_resume(None, tmp_path) is None


def test_auto_without_checkpoint_starts_fresh_but_true_refuses(tmp_path):
    assert resolve_resume("auto", tmp_path) is None
    with pytest.raises(HfsegError, match="no complete checkpoint-N directory"):
        resolve_resume("true", tmp_path)


def test_explicit_checkpoint_path_must_be_a_complete_checkpoint(tmp_path):
    incomplete = make_checkpoint(tmp_path / "elsewhere" / "checkpoint-3", complete=False)
    with pytest.raises(HfsegError, match="missing trainer_state.json"):
        resolve_resume(str(incomplete), tmp_path)
    pickle_only = tmp_path / "pickle"
    pickle_only.mkdir()
    (pickle_only / "trainer_state.json").write_text("{}")
    (pickle_only / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(HfsegError, match="missing model.safetensors"):
        resolve_resume(str(pickle_only), tmp_path)
    with pytest.raises(HfsegError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path / "nope"), tmp_path)


def test_run_files_are_recognised(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert run_files_in(tmp_path) == []
    make_checkpoint(tmp_path / "checkpoint-2")
    (tmp_path / "hfseg_config.yaml").write_text("{}")
    assert run_files_in(tmp_path) == ["checkpoint-2", "hfseg_config.yaml"]


def test_checkpoint_weights_load_strictly_despite_renamed_keys(tmp_path):
    """transformers 5 saves SegFormer under legacy key names; Trainer's own non-strict resume loaded none of them."""
    from conftest import tiny_model

    from hfseg.training.checkpoints import load_checkpoint_weights

    torch.manual_seed(0)
    trained = tiny_model()
    trained.save_pretrained(tmp_path / "checkpoint-1")
    saved_keys = set(load_file(str(tmp_path / "checkpoint-1" / "model.safetensors")))
    assert saved_keys != set(trained.state_dict()), "keys are no longer renamed on save: the override may go"
    torch.manual_seed(1)
    fresh = tiny_model()
    load_checkpoint_weights(fresh, tmp_path / "checkpoint-1")
    for name, tensor in trained.state_dict().items():
        assert torch.equal(tensor, fresh.state_dict()[name]), name


@pytest.mark.slow
def test_finished_run_is_complete_atomic_and_holds_no_token(tmp_path):
    from hfseg.finetune import main

    output_dir = tmp_path / "out"
    token = "hf_NotARealTokenButSecret123"
    main(tiny_run_args(output_dir, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1",
                       "--hub_token", token, "--num_preview_images", "1"))  # fmt: skip
    assert not (output_dir / INCOMPLETE_MARKER).exists()
    assert not (output_dir / STAGING_DIR_NAME).exists()
    assert latest_complete_checkpoint(output_dir) == output_dir / "checkpoint-2"
    assert (output_dir / "model.safetensors").is_file()
    assert not list(output_dir.rglob("pytorch_model*.bin")), "weights must be safetensors only"
    for path in output_dir.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), f"the Hub token leaked into {path}"


@pytest.mark.parametrize("umask", [0o022, 0o002], ids=["umask022", "umask002"])
def test_saved_files_follow_the_umask(tmp_path, umask):
    """safetensors writes the weights through a 0600 temp file: the final model and checkpoints must still get
    0666 & ~umask, like every other file of the run."""
    from conftest import tiny_model

    from hfseg.config import SegTrainingArguments
    from hfseg.training.checkpoints import save_final_model
    from hfseg.training.trainer import SegTrainer

    args = SegTrainingArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, eval_strategy="no", save_strategy="no"
    )
    trainer = SegTrainer(model=tiny_model(), args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    previous = os.umask(umask)
    try:
        save_final_model(trainer)
        trainer.state.global_step = 1
        trainer._save_checkpoint(trainer.model, trial=None)
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert tmp_path / "model.safetensors" in files and tmp_path / "checkpoint-1" / "model.safetensors" in files
    modes = {path.relative_to(tmp_path).as_posix(): oct(path.stat().st_mode & 0o777) for path in files}
    assert modes == dict.fromkeys(modes, oct(expected))


def test_tools_refuse_an_unfinished_output_dir(tmp_path):
    from hfseg.training.checkpoints import check_output_complete

    check_output_complete(tmp_path)
    (tmp_path / INCOMPLETE_MARKER).write_text("")
    with pytest.raises(HfsegError, match="did not finish.*--resume_from_checkpoint auto"):
        check_output_complete(tmp_path)


def test_predict_evaluate_and_push_refuse_an_unfinished_run(tmp_path, shared_data, monkeypatch, capsys):
    """A model dir still marked incomplete is refused by every tool that loads or publishes it, with the fix."""
    from conftest import save_tiny_model

    from hfseg.evaluation.evaluate_model import main as evaluate_main
    from hfseg.evaluation.predict import main as predict_main
    from hfseg.hub.push import main as push_main

    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_real")
    run = save_tiny_model(tmp_path / "run", {i: f"class_{i}" for i in range(5)})
    (run / INCOMPLETE_MARKER).write_text("training started")
    images = shared_data / "ade20k" / "ADEChallengeData2016" / "images" / "validation"
    commands = {
        "predict": lambda: predict_main(
            ["--model", str(run), "--input", str(images), "--output", str(tmp_path / "p")]
        ),
        "evaluate": lambda: evaluate_main(
            [
                "--model",
                str(run),
                "--data_dir",
                str(shared_data / "ade20k"),
                "--layout",
                "ade20k",
                "--output_dir",
                str(tmp_path / "e"),
            ]
        ),  # fmt: skip
        "push": lambda: push_main([str(run), "--repo_id", "me/unfinished"]),
    }
    for tool, command in commands.items():
        with pytest.raises(SystemExit) as exit_info:
            command()
        error = capsys.readouterr().err
        assert exit_info.value.code == 2, tool
        assert f"{run} holds a run that did not finish" in error and "--resume_from_checkpoint auto" in error, tool
    assert not (tmp_path / "p").exists() and not (tmp_path / "e").exists()


def test_auto_restarts_a_run_killed_before_its_first_checkpoint(tmp_path):
    from hfseg.config import parse_args
    from hfseg.training.checkpoints import mark_incomplete, prepare_output_dir

    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / INCOMPLETE_MARKER).write_text("")
    (output_dir / STAGING_DIR_NAME / "checkpoint-2").mkdir(parents=True)  # a save cut short
    *_, training_args = parse_args(tiny_run_args(output_dir))
    with pytest.raises(HfsegError, match="already holds a run"):
        prepare_output_dir(training_args)
    *_, training_args = parse_args(tiny_run_args(output_dir, "--resume_from_checkpoint", "auto"))
    assert prepare_output_dir(training_args) is None
    mark_incomplete(training_args)  # what finetune does once data and model are ready
    assert not (output_dir / STAGING_DIR_NAME).exists()
