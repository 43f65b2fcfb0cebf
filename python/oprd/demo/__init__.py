"""`oprd demo`, the method end to end on the embedded arithmetic task: the teacher's SFT and the student chosen from
its checkpoints, every method distilled over seeds, the tables, plots and diagnostics; and `oprd demo --bridge`
(a teacher of another shape, then of another tokenizer).

A recipe built on the library, not part of it: it may import `train` and everything below (bridge, rollout,
capture, tasks, ...); only `cli` imports it.
"""

from oprd.demo.distill import distill_runs
from oprd.demo.run import run_demo, write_outputs
from oprd.demo.settings import METHODS, DemoRun, DemoSettings

__all__ = ["METHODS", "DemoRun", "DemoSettings", "distill_runs", "run_demo", "write_outputs"]
