"""Only torchrun launches several training processes: copies started by another launcher (mpirun, SLURM tasks) are
refused before any model loads, since each would run the whole job and race on one run directory (before this
check, two such copies wrote 3 metric lines for 2 steps). torchrun itself: tests/test_distributed.py."""

from __future__ import annotations

import pytest
from test_cli import tiny, train_args  # noqa: F401 - the fixture

from oprd.cli.commands import main
from oprd.parallel.processes import _WORLD_VARIABLES, TORCHRUN_VARIABLES, check_launch, world_size


@pytest.fixture
def one_process(monkeypatch):
    for name in (*_WORLD_VARIABLES, *TORCHRUN_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("variable", _WORLD_VARIABLES)
def test_world_size_reads_each_launchers_variable(one_process, variable):
    assert world_size() == 1
    check_launch("here")
    one_process.setenv(variable, "1")
    assert world_size() == 1
    one_process.setenv(variable, "3")
    assert world_size() == 3
    with pytest.raises(ValueError, match=r"here: launched as one of 3 processes, but not by torchrun .*RANK"):
        check_launch("here")


def test_torchruns_variables_are_a_launch_the_trainer_can_share(one_process):
    for name, value in zip(TORCHRUN_VARIABLES, ("1", "2", "1", "localhost", "29500")):
        one_process.setenv(name, value)
    check_launch("here")


def test_oprd_train_refuses_another_launchers_copies_before_any_work(tiny, tmp_path, capsys,  # noqa: F811
                                                                     one_process):
    one_process.setenv("SLURM_NTASKS", "2")
    assert main(train_args(tiny, tmp_path, "optim.steps=1")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "oprd train: launched as one of 2 processes, but not by torchrun" in err
    assert not (tmp_path / "run").exists()


def test_a_global_batch_that_does_not_split_across_the_processes_is_refused(tiny, tmp_path, capsys,  # noqa: F811
                                                                           one_process):
    for name, value in zip(TORCHRUN_VARIABLES, ("0", "2", "0", "localhost", "29500")):
        one_process.setenv(name, value)
    assert main(train_args(tiny, tmp_path, "optim.steps=1", "rollout.prompts_per_step=3")) == 2
    err = capsys.readouterr().err
    assert "`rollout.prompts_per_step` (the global batch, split across the processes) must be a multiple of the 2" \
        in err and "got 3" in err
