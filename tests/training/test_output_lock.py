"""One run per output dir: a second run is refused with the holder's PID and host; the lock is released however a
run ends, and a run killed with SIGKILL leaves no lock behind."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ROOT, tiny_run_args

from hfseg.errors import HfsegError
from hfseg.finetune import main
from hfseg.training.checkpoints import INCOMPLETE_MARKER
from hfseg.training.output_lock import LOCK_NAME, lock_output_dir

HOLD_LOCK = textwrap.dedent(
    """
    import sys, types
    from hfseg.training.output_lock import lock_output_dir
    with lock_output_dir(types.SimpleNamespace(process_index=0, output_dir=sys.argv[1])):
        print("held", flush=True)
        sys.stdin.read()  # until the test kills it
    """
)


def main_args(output_dir: Path):
    return SimpleNamespace(process_index=0, output_dir=str(output_dir))


def test_second_run_into_a_locked_output_dir_is_refused_with_holder_pid_and_host(tmp_path, capsys):
    output_dir = tmp_path / "out"
    with lock_output_dir(main_args(output_dir)):
        with pytest.raises(SystemExit) as exit_info:
            main(tiny_run_args(output_dir))
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert f"--output_dir {output_dir} is in use by another run" in error
        assert f"PID {os.getpid()} on host {socket.gethostname()}" in error and "Traceback" not in error
        assert not (output_dir / INCOMPLETE_MARKER).exists(), "the refused run wrote into the other run's dir"


@pytest.mark.slow
def test_lock_is_released_after_a_finished_and_a_failed_run(tmp_path, capsys):
    output_dir = tmp_path / "out"
    main(tiny_run_args(output_dir, "--max_steps", "1", "--num_preview_images", "0"))
    with lock_output_dir(main_args(output_dir)):  # free again after a normal end
        pass
    nan_run = tiny_run_args(
        tmp_path / "nan", "--optim", "sgd", "--learning_rate", "1e30", "--max_grad_norm", "0",
        "--lr_scheduler_type", "constant",
    )  # fmt: skip
    with pytest.raises(SystemExit):
        main(nan_run)
    assert "training loss is" in capsys.readouterr().err
    with lock_output_dir(main_args(tmp_path / "nan")):  # and after an error
        pass


@pytest.mark.slow
def test_a_lock_held_by_a_sigkilled_process_does_not_block_the_next_run(tmp_path):
    output_dir = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(output_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = pytest.raises(HfsegError, match=f"PID {holder.pid} on host {socket.gethostname()}")
        with refused, lock_output_dir(main_args(output_dir)):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert holder.returncode == -signal.SIGKILL
    assert (output_dir / LOCK_NAME).exists(), "the lock file stays; the kernel released the lock itself"
    with lock_output_dir(main_args(output_dir)):
        pass


def test_only_the_main_process_takes_the_lock(tmp_path):
    output_dir = tmp_path / "out"
    other_process = SimpleNamespace(process_index=1, output_dir=str(output_dir))
    with lock_output_dir(main_args(output_dir)), lock_output_dir(other_process):
        pass  # another process of the same run is not refused


def test_a_folder_made_for_the_lock_is_removed_when_the_run_writes_nothing(tmp_path):
    args = SimpleNamespace(output_dir=str(tmp_path / "new" / "run"), process_index=0)
    with pytest.raises(HfsegError), lock_output_dir(args):
        raise HfsegError("the data check stopped the run")
    assert not (tmp_path / "new" / "run").exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    with lock_output_dir(SimpleNamespace(output_dir=str(existing), process_index=0)):
        pass
    assert existing.is_dir()  # the user's own folder stays
    with lock_output_dir(args):
        (tmp_path / "new" / "run" / "model.safetensors").write_bytes(b"x")
    assert (tmp_path / "new" / "run" / "model.safetensors").is_file()
