"""benchmarks/gpu_check.sh, the one prepared GPU run, stays runnable without a GPU to try it on: every file and
benchmark case it names exists, and a failing or timed-out step shows in its summary and its exit status."""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ROOT / "benchmarks" / "gpu_steps.sh"


def _script_text() -> str:
    return SCRIPT.read_text().replace("\\\n", " ")  # join continued lines


def test_scripts_parse():
    for script in (SCRIPT, STEPS):
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_every_path_the_script_names_exists():
    named = set(re.findall(r"(?:tests|benchmarks)/[\w./-]+\.(?:py|sh)", _script_text()))
    assert {"tests/test_gpu_shapes.py", "benchmarks/bench_actor_update.py", "benchmarks/gpu_steps.sh"} <= named
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f"gpu_check.sh names files that do not exist: {missing}"


def test_every_benchmark_case_the_script_names_exists():
    calls = re.findall(r"benchmarks/(\w+)\.py[^\n]*?--cases ([\w. -]+?)(?= --|$)", _script_text(), re.M)
    assert calls, "expected --cases arguments in gpu_check.sh"
    for module, cases in calls:
        runner = importlib.import_module(module)
        known = {c.name for c in runner.GPU_CASES}
        for case in cases.split():
            assert case in known, f"{module}: case {case!r} is not among its GPU cases {sorted(known)}"


def _run_steps(tmp_path: Path, steps: str) -> subprocess.CompletedProcess:
    script = f'out="{tmp_path}"; source "{STEPS}"; start_steps; {steps}; finish_steps'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True)


def _summary(tmp_path: Path) -> list[list[str]]:
    return [line.split("\t") for line in (tmp_path / "summary.tsv").read_text().splitlines()[1:]]


def test_failed_and_timed_out_steps_show_in_summary_and_exit_status(tmp_path):
    done = _run_steps(tmp_path, "run_step good 10 good.log true; run_step bad 10 bad.log bash -c 'echo boom; exit 3';"
                                " run_step slow 1 slow.log sleep 5; run_step after 10 after.log echo still-runs")
    assert done.returncode == 1
    rows = _summary(tmp_path)
    assert [(r[0], r[1]) for r in rows] == [("good", "ok"), ("bad", "FAILED (rc 3)"), ("slow", "TIMEOUT after 1s"),
                                           ("after", "ok")]
    assert "!! step 'bad': FAILED (rc 3)" in done.stdout and "!! step 'slow': TIMEOUT" in done.stdout
    assert (tmp_path / "bad.log").read_text() == "boom\n"  # the log holds the command's output, not a filtered pipe
    assert "still-runs" in (tmp_path / "after.log").read_text()


def test_steps_past_the_time_budget_are_skipped_and_count_as_failures(tmp_path):
    script = (f'out="{tmp_path}"; GPU_CHECK_BUDGET=6; source "{STEPS}"; start_steps; '
              'run_step slow 60 slow.log sleep 10; run_step late 60 late.log true; finish_steps')
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert done.returncode == 1
    rows = _summary(tmp_path)
    assert rows[0][0] == "slow" and rows[0][1] in ("TIMEOUT after 5s", "TIMEOUT after 6s")  # capped: not 60 s
    assert int(rows[0][2]) <= 7
    assert rows[1][:2] == ["late", "SKIPPED (budget)"]


@pytest.mark.parametrize("steps", ["run_step one 10 one.log true", "run_step one 10 a.log true; run_step two 10 "
                                                                   "b.log echo hi"])
def test_all_steps_passing_exit_zero(tmp_path, steps):
    done = _run_steps(tmp_path, steps)
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(r[1] == "ok" for r in _summary(tmp_path))
