"""Interrupted runs resume exactly; checkpoints are atomic; an output dir holds one run; signals save and stop."""

import errno
import functools
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, tiny_run_args
from safetensors.torch import load_file, save_file

from hfseg.errors import HfsegError
from hfseg.training.checkpoints import (
    INCOMPLETE_MARKER,
    STAGING_DIR_NAME,
    checkpoint_step,
    disk_error,
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


def start(output_dir: Path, *extra: str, file_size_limit: int | None = None) -> subprocess.Popen:
    """The entry script in a subprocess; its output goes to `output_dir`.log (a pipe could fill up and block it).

    `file_size_limit`: the child's RLIMIT_FSIZE in bytes (`ulimit -f`), SIGXFSZ ignored so a write fails with EFBIG.
    """
    log = open(f"{output_dir}.log", "a")  # noqa: SIM115 - closed by finish()
    process = subprocess.Popen(
        [sys.executable, FINETUNE, *tiny_run_args(output_dir, *DETERMINISTIC, "--disable_tqdm", "true", *extra)],
        stdout=log, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=finetune_env(),
        preexec_fn=None if file_size_limit is None else functools.partial(limit_file_size, file_size_limit),
    )  # fmt: skip
    process.log = log
    return process


def limit_file_size(size: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


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
    save_file({"weight": torch.zeros(2)}, str(path / "model.safetensors"))  # a whole file: damaged ones are skipped
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


# --- a full disk or a file-size limit: one line, nothing lost ---


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1200 KiB tmpfs (room for one tiny checkpoint, not two); skipped where mounting needs rights we lack."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def write_failures(directory: Path) -> list[Exception]:
    """The exceptions safetensors and torch really raise when a 2 MB file cannot be written in `directory`."""
    tensors = {"weight": torch.zeros(500_000)}
    failures = []
    for save in (
        lambda: save_file(tensors, str(directory / "model.safetensors")),
        lambda: torch.save(tensors, str(directory / "optimizer.pt")),
    ):
        try:
            save()
        except Exception as error:  # noqa: BLE001 - the point is to see which type arrives
            failures.append(error)
        for file in directory.iterdir():
            file.unlink()
    return failures


def test_full_disk_is_recognised_through_safetensors_and_torch_errors(small_tmpfs):
    failures = write_failures(small_tmpfs)
    assert [type(error).__name__ for error in failures] == ["SafetensorError", "RuntimeError"]  # not OSError
    for error in failures:
        explained = disk_error(error, "checkpoint checkpoint-4", small_tmpfs)
        assert explained is not None, repr(error)
        assert str(explained).startswith(
            f"no space left on the device while saving checkpoint checkpoint-4 to {small_tmpfs}"
        )
        assert "--resume_from_checkpoint auto" in str(explained)


def test_file_size_limit_is_recognised_through_safetensors_and_torch_errors(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
    try:
        failures = write_failures(tmp_path)
        explained = [disk_error(error, "the final model", tmp_path) for error in failures]
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert [type(error).__name__ for error in failures] == ["SafetensorError", "RuntimeError"]
    for error, message in zip(failures, explained, strict=True):
        assert message is not None, repr(error)
        assert f"a file size limit (ulimit -f) stopped saving the final model to {tmp_path}" in str(message)
        assert os.strerror(errno.EFBIG) in str(message)
    assert disk_error(OSError(errno.ENOENT, "No such file or directory"), "x", tmp_path) is None


def assert_one_line_error(returncode: int, log: str, expected: str) -> None:
    assert returncode == 2, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    errors = [line for line in log.splitlines() if line.startswith("hfseg: error:")]
    assert len(errors) == 1 and expected in errors[0], log[-3000:]


@pytest.mark.slow
def test_full_disk_at_the_second_checkpoint_keeps_the_first(small_tmpfs):
    output_dir = small_tmpfs / "out"
    returncode, log = finish(start(output_dir, "--save_total_limit", "5"))
    assert_one_line_error(returncode, log, "no space left on the device while saving checkpoint checkpoint-4")
    assert latest_complete_checkpoint(output_dir) == output_dir / "checkpoint-2"
    assert not (output_dir / "checkpoint-4").exists() and not (output_dir / STAGING_DIR_NAME).exists()
    assert (output_dir / INCOMPLETE_MARKER).exists()


@pytest.mark.slow
@pytest.mark.parametrize("save_strategy", ["steps", "no"])
def test_file_size_limit_at_checkpoint_and_final_save(tmp_path, save_strategy):
    output_dir = tmp_path / "out"
    process = start(output_dir, "--save_strategy", save_strategy, file_size_limit=100_000)  # model.safetensors: 228 kB
    returncode, log = finish(process)
    what = "checkpoint checkpoint-2" if save_strategy == "steps" else "the final model"
    assert_one_line_error(returncode, log, f"a file size limit (ulimit -f) stopped saving {what}")
    assert not (output_dir / STAGING_DIR_NAME).exists() and not (output_dir / "model.safetensors").exists()
    assert latest_complete_checkpoint(output_dir) is None and (output_dir / INCOMPLETE_MARKER).exists()


# --- nothing of one run resumed into another; no step past max_steps; damaged or non-finite checkpoints ---


def saved_checkpoint(path: Path, seed: int = 0) -> Path:
    """A checkpoint dir as Trainer writes it, as far as resuming looks: real safetensors weights and a state."""
    from conftest import tiny_model

    torch.manual_seed(seed)
    tiny_model().save_pretrained(path)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": checkpoint_step(path), "log_history": []}))
    return path


def test_truncated_weights_fall_back_for_auto_and_name_the_previous_checkpoint_for_a_path(tmp_path, caplog):
    from conftest import tiny_model

    from hfseg.training.checkpoints import load_checkpoint_weights

    previous, latest = saved_checkpoint(tmp_path / "checkpoint-2"), saved_checkpoint(tmp_path / "checkpoint-4")
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size - 1000])
    with caplog.at_level(logging.WARNING):
        assert resolve_resume("auto", tmp_path) == str(previous)
    assert f"skipping damaged checkpoint {latest} (model.safetensors is truncated" in caplog.text
    with pytest.raises(HfsegError) as error:
        resolve_resume(str(latest), tmp_path)
    assert "model.safetensors is truncated" in str(error.value)
    assert f"--resume_from_checkpoint {previous}" in str(error.value)
    load_checkpoint_weights(tiny_model(), previous)  # the one it falls back to loads


def test_nan_stop_names_only_a_checkpoint_before_the_bad_weights_with_finite_weights(tmp_path):
    from hfseg.training.interrupts import last_good_checkpoint

    for step in (2, 4, 6):
        saved_checkpoint(tmp_path / f"checkpoint-{step}", seed=step)
    blown = load_file(str(tmp_path / "checkpoint-4" / "model.safetensors"))
    name = next(key for key, tensor in blown.items() if tensor.is_floating_point())
    blown[name] = torch.full_like(blown[name], float("inf"))
    save_file(blown, str(tmp_path / "checkpoint-4" / "model.safetensors"), metadata={"format": "pt"})
    clause = last_good_checkpoint(tmp_path, step=6)  # the loss came from the weights after step 6
    assert clause.startswith(f"; the last good checkpoint is {tmp_path / 'checkpoint-2'} ("), clause
    assert "not checkpoint-6: its weights gave this loss" in clause
    assert f"not checkpoint-4: {name} in model.safetensors is not finite" in clause
    clause = last_good_checkpoint(tmp_path, step=2)
    assert clause.startswith("; no checkpoint is good to resume from (") and clause.endswith(": start afresh"), clause
    assert "not checkpoint-2: its weights gave this loss" in clause and "not checkpoint-6: newer than" in clause
    assert last_good_checkpoint(tmp_path / "empty", step=3) == ""


@pytest.mark.slow
def test_nan_stop_in_a_run_names_a_checkpoint_with_finite_weights(tmp_path, capsys):
    import re

    from hfseg.finetune import main

    output_dir = tmp_path / "out"
    exploding = ("--optim", "sgd", "--learning_rate", "1e30", "--max_grad_norm", "0", "--lr_scheduler_type")
    exploding = (*exploding, "constant")
    with pytest.raises(SystemExit):
        main(tiny_run_args(output_dir, *exploding, "--save_strategy", "steps", "--save_steps", "1"))
    error = capsys.readouterr().err
    stopped_at = int(re.search(r"training loss is \w+ at step (\d+)", error).group(1))
    named = re.search(r"the last good checkpoint is (\S+)", error)
    assert latest_complete_checkpoint(output_dir) == output_dir / f"checkpoint-{stopped_at - 1}", error
    assert f"not checkpoint-{stopped_at - 1}: its weights gave this loss" in error
    if named:
        assert checkpoint_step(named.group(1)) < stopped_at - 1
        saved = load_file(f"{named.group(1)}/model.safetensors")
        assert all(torch.isfinite(tensor).all() for tensor in saved.values())


@pytest.mark.slow
def test_run_killed_while_saving_its_final_model_resumes_without_training_further(tmp_path):
    """Its last checkpoint is at max_steps; Trainer would start the next epoch's remainder and train one step more."""
    from hfseg.finetune import main

    output_dir = tmp_path / "out"
    run = tiny_run_args(output_dir, *DETERMINISTIC, "--max_steps", "6", "--num_preview_images", "0")
    main(run)  # 4 steps per epoch: step 6 is mid-epoch
    last = output_dir / "checkpoint-6"
    # The state a kill during `save_final_model` leaves: the final checkpoint, no final model, the run unfinished.
    (output_dir / "model.safetensors").unlink()
    (output_dir / INCOMPLETE_MARKER).write_text("")
    main([*run, "--resume_from_checkpoint", "auto"])
    final, saved = weights(output_dir), load_file(str(last / "model.safetensors"))
    assert final.keys() == saved.keys()
    for name, tensor in saved.items():
        assert torch.equal(tensor, final[name]), f"{name} changed: the resumed run trained past max_steps"
    assert latest_complete_checkpoint(output_dir) == last, "no checkpoint beyond max_steps"
    assert not (output_dir / INCOMPLETE_MARKER).exists()


def test_overwrite_moves_the_previous_run_aside_so_auto_resumes_nothing_of_it(tmp_path, caplog):
    """`--overwrite_output_dir` (the demo recipe sets it) then `auto` once resumed the old run's checkpoint-40."""
    from hfseg.config import parse_args
    from hfseg.training.checkpoints import PREVIOUS_RUN_DIR, mark_incomplete, prepare_output_dir

    output_dir = tmp_path / "out"
    saved_checkpoint(output_dir / "checkpoint-40")  # a finished run
    for name in ("model.safetensors", "eval_results.json", "hfseg_config.yaml", "trainable_parameters.json"):
        (output_dir / name).write_text("old run")
    (output_dir / "notes.txt").write_text("mine")
    *_, new_run = parse_args(tiny_run_args(output_dir, "--overwrite_output_dir", "--resume_from_checkpoint", "auto"))
    assert prepare_output_dir(new_run) is None
    assert (output_dir / "checkpoint-40").is_dir(), "nothing moves before the data and model are ready"
    with caplog.at_level(logging.WARNING):
        mark_incomplete(new_run)
    previous = output_dir / PREVIOUS_RUN_DIR
    assert f"moved the previous run's checkpoint-40, eval_results.json, hfseg_config.yaml, model.safetensors, " \
        f"trainable_parameters.json to {previous}" in caplog.text  # fmt: skip
    assert latest_complete_checkpoint(output_dir) is None and (previous / "checkpoint-40").is_dir()
    assert (output_dir / "notes.txt").read_text() == "mine", "files no run writes stay"
    assert sorted(run_files_in(output_dir)) == [INCOMPLETE_MARKER]

    # The new run is killed after its checkpoint-10; the same command (overwrite + auto) continues it.
    saved_checkpoint(output_dir / "checkpoint-10")
    assert prepare_output_dir(new_run) == str(output_dir / "checkpoint-10")
    mark_incomplete(new_run)
    assert (output_dir / "checkpoint-10").is_dir() and (previous / "checkpoint-40").is_dir()

    # It finishes; the next overwrite (`make demo` again) replaces the run kept aside.
    (output_dir / INCOMPLETE_MARKER).unlink()
    *_, third_run = parse_args(tiny_run_args(output_dir, "--overwrite_output_dir"))
    assert prepare_output_dir(third_run) is None
    mark_incomplete(third_run)
    assert sorted(path.name for path in previous.iterdir()) == ["checkpoint-10"]
    assert latest_complete_checkpoint(output_dir) is None


def test_overwrite_refuses_to_resume_a_checkpoint_it_moves_aside(tmp_path):
    from hfseg.config import parse_args
    from hfseg.training.checkpoints import prepare_output_dir

    output_dir = tmp_path / "out"
    checkpoint = saved_checkpoint(output_dir / "checkpoint-40")
    for resume in (str(checkpoint), "latest"):
        *_, training_args = parse_args(
            tiny_run_args(output_dir, "--overwrite_output_dir", "--resume_from_checkpoint", resume)
        )
        with pytest.raises(HfsegError, match="--overwrite_output_dir starts a new one there"):
            prepare_output_dir(training_args)
