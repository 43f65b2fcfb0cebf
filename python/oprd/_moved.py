"""The module paths of oprd 0.1 that moved into folders (issue 26), kept importable for one release.

`import oprd.trainer` (or `from oprd.config import load_config`) still works: it warns once with a
DeprecationWarning naming the new path, and gives the module at that path itself, not a copy, so a name patched
or read through either path is the same object. Installed by `oprd/__init__.py`; it imports nothing of `oprd`
until an old path is asked for. `oprd.cli`, `oprd.demo` and `oprd.rollout` are folders now whose `__init__` hands
on the old module's names, so they need no entry here. The table goes with the next release.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "oprd.accumulation": "oprd.train.accumulation",
    "oprd.atomic_files": "oprd.runs.atomic_files",
    "oprd.checkpoint": "oprd.runs.checkpoint",
    "oprd.cli_bridge": "oprd.cli.bridge",
    "oprd.config": "oprd.train.config",
    "oprd.data": "oprd.rollout.prompts",
    "oprd.demo_bridge": "oprd.demo.bridge",
    "oprd.demo_bridge_report": "oprd.demo.bridge_report",
    "oprd.demo_bridge_stages": "oprd.demo.bridge_stages",
    "oprd.demo_bridge_tokenizers": "oprd.demo.bridge_tokenizers",
    "oprd.demo_diagnostics": "oprd.demo.diagnostics",
    "oprd.demo_report": "oprd.demo.report",
    "oprd.demo_seeds": "oprd.demo.seeds",
    "oprd.distributed": "oprd.parallel.group",
    "oprd.evaluate": "oprd.train.evaluate",
    "oprd.fsdp_check": "oprd.parallel.fsdp_check",
    "oprd.head_transfer": "oprd.train.head_transfer",
    "oprd.loading": "oprd.cli.loading",
    "oprd.manifest": "oprd.runs.manifest",
    "oprd.memory": "oprd.train.memory",
    "oprd.memory_plan": "oprd.train.memory_plan",
    "oprd.metrics_log": "oprd.runs.metrics_log",
    "oprd.model_files": "oprd.cli.model_files",
    "oprd.optim": "oprd.train.optim",
    "oprd.pairing": "oprd.objective.pairing",
    "oprd.preflight": "oprd.cli.preflight",
    "oprd.processes": "oprd.parallel.processes",
    "oprd.prompt_format": "oprd.rollout.prompt_format",
    "oprd.rank_metrics": "oprd.parallel.rank_metrics",
    "oprd.run_dir": "oprd.runs.run_dir",
    "oprd.sft": "oprd.demo.sft",
    "oprd.sharding": "oprd.parallel.sharding",
    "oprd.student_choice": "oprd.demo.student_choice",
    "oprd.tokenizer": "oprd.tasks.tokenizers",
    "oprd.trainer": "oprd.train.trainer",
}


class _MovedLoader(importlib.abc.Loader):
    """Puts the module of the new path in `sys.modules` under the old name; the import system then returns it."""

    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec):
        return None  # a placeholder module, replaced in exec_module

    def exec_module(self, module) -> None:
        old = module.__name__
        warnings.warn(f"{old} moved to {self.new}; import it from there (the old path goes in the next release)",
                      DeprecationWarning, stacklevel=2)
        sys.modules[old] = importlib.import_module(self.new)


class _MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths of MOVED, and nothing else."""

    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _MovedLoader(new))


def install() -> None:
    """Adds the finder once (a second `install` is a no-op)."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
