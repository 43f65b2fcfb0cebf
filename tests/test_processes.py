"""oprd train runs in one process: launched several times (torchrun, MPI, SLURM) it is refused before any model
loads, so copies cannot race on one run directory (before this check, two torchrun processes each ran the whole job
and wrote 3 metric lines for 2 steps)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_cli import tiny, train_args  # noqa: F401 - the fixture

from oprd.cli import main
from oprd.processes import _WORLD_VARIABLES, check_single_process, world_size


@pytest.fixture
def one_process(monkeypatch):
    for name in _WORLD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("variable", _WORLD_VARIABLES)
def test_world_size_reads_each_launchers_variable(one_process, variable):
    assert world_size() == 1
    check_single_process("here")
    one_process.setenv(variable, "1")
    assert world_size() == 1
    one_process.setenv(variable, "3")
    assert world_size() == 3
    with pytest.raises(ValueError, match=r"here: launched as one of 3 processes .* Launch it once"):
        check_single_process("here")


def test_oprd_train_refuses_a_multi_process_launch_before_any_work(tiny, tmp_path, capsys, one_process):  # noqa: F811
    one_process.setenv("WORLD_SIZE", "2")
    assert main(train_args(tiny, tmp_path, "optim.steps=1")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "oprd train: launched as one of 2 processes" in err
    assert not (tmp_path / "run").exists()


def test_two_torchrun_processes_write_nothing(tiny, tmp_path, one_process):  # noqa: F811
    """The real launch: both copies exit with the one-line error, and no run directory or metrics appear."""
    args = train_args(tiny, tmp_path, "optim.steps=2", "rollout.prompts_per_step=2", "rollout.max_new_tokens=4")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "oprd.cli",
                           *args], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.count("launched as one of 2 processes") == 2, done.stderr[-2000:]
    assert not (tmp_path / "run").exists()
