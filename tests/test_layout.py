"""The trainer package's layout holds (issue 26): imports run one way down the folders, no function is longer than
60 lines, every folder says in its `__init__` what it owns and may import, and the module paths of oprd 0.1 still
import (for one release) as the very modules they moved to."""

import ast
import importlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import oprd
from oprd._moved import MOVED

PACKAGE = Path(oprd.__file__).parent

# Top to bottom: a part may import only parts on lower tiers, and itself; parts on one tier never import each other.
TIERS = [
    ("cli",),
    ("demo",),
    ("train",),
    ("integrations",),
    ("objective",),
    ("bridge",),
    ("rollout", "capture"),
    ("parallel",),
    ("runs",),
    ("layers", "positions", "injection", "tasks"),
]
TIER_OF = {part: level for level, parts in enumerate(TIERS) for part in parts}
FACES = {"__init__", "_moved"}  # the package's face, and the table of old paths (it imports by name, at run time)
MAX_FUNCTION_LINES = 60


def modules():
    """(path, part) of every module of the package but its face; the part is its folder, or its own name."""
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if len(relative.parts) == 1 and relative.stem in FACES:
            continue
        yield path, relative.parts[0] if len(relative.parts) > 1 else relative.stem


def oprd_imports(tree: ast.AST):
    """(line, part) of every import of `oprd.<part>...` in `tree`, function-level (lazy) imports included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "oprd" else [f"oprd.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("oprd."):
                yield node.lineno, name.split(".")[1]


def test_every_part_has_a_tier():
    parts = {part for _, part in modules()}
    assert parts <= set(TIER_OF), f"place these in TIERS (and in docs/trainer.md's layout): {parts - set(TIER_OF)}"


def test_imports_run_down_the_tiers():
    wrong = []
    for path, part in modules():
        for line, target in oprd_imports(ast.parse(path.read_text())):
            if target != part and TIER_OF.get(target, -1) <= TIER_OF[part]:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} ({part}) imports oprd.{target}")
    assert not wrong, "imports that run up or across the tiers:\n" + "\n".join(wrong)


def test_the_direction_check_sees_a_lazy_import_running_up():
    source = "def f():\n    from oprd.train.trainer import Trainer\n    import oprd.cli.commands\n"
    assert list(oprd_imports(ast.parse(source))) == [(2, "train"), (3, "cli")]
    assert list(oprd_imports(ast.parse("from oprd import metrics_log, layers\n"))) == [(1, "metrics_log"),
                                                                                       (1, "layers")]


def test_no_function_is_longer_than_60_lines():
    long = []
    for path, _ in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if node.end_lineno - first + 1 > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} "
                                f"({node.end_lineno - first + 1} lines)")
    assert not long, "functions over 60 lines:\n" + "\n".join(long)


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py")))
def test_each_folder_says_what_it_owns_and_may_import(folder):
    doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
    assert doc and "import" in doc, f"oprd/{folder}/__init__.py: a docstring saying what it owns and may import"


# The public names of each module of oprd 0.1 that moved (its top-level definitions at commit 866366f).
OLD_NAMES = {
    "oprd.accumulation": "accumulate_gradients",
    "oprd.atomic_files": "fsync_dir write_atomic",
    "oprd.checkpoint": "CheckpointError CheckpointWarning TrainerState save_checkpoint latest_checkpoint "
                       "checkpoint_problems load_checkpoint checkpoint_states remove_temporaries capture_rng_state",
    "oprd.cli": "cmd_demo cmd_train cmd_eval parser main",
    "oprd.cli_bridge": "cmd_collect cmd_fit add_bridge_parser",
    "oprd.config": "DTYPES LOSS_TYPES KERNEL_BACKENDS ModelConfig DataConfig RolloutConfig MethodConfig OprdConfig "
                   "BridgeConfig OptimConfig EvalConfig RunConfig ParallelConfig TrainConfig PARALLEL_STRATEGIES "
                   "TEACHER_PLACEMENTS load_config validate parse_layers config_to_dict save_config resolve_device "
                   "resolve_dtype",
    "oprd.data": "MissingFieldError load_prompts PromptStream",
    "oprd.demo": "METHODS DemoSettings DemoRun run_demo distill_runs write_outputs",
    "oprd.demo_bridge": "BridgeDemoSettings run_bridge_demo",
    "oprd.demo_bridge_report": "PAPER_TABLE4 render_bridge_tables plot_bridge",
    "oprd.demo_bridge_stages": "train_teacher collect_and_fit",
    "oprd.demo_bridge_tokenizers": "BPE_TEXTS run_cross_tokenizer",
    "oprd.demo_diagnostics": "head_distance decoded_by_teacher final_cosines",
    "oprd.demo_report": "STYLES COLORS PAPER_TABLE2 PAPER_BENCHMARKS paper_gap_closed render_tables plot plot_curves",
    "oprd.demo_seeds": "AVERAGED combine_seeds",
    "oprd.distributed": "Group join leave",
    "oprd.evaluate": "Grader default_grader EvalCounts evaluate evaluation_counts",
    "oprd.fsdp_check": "is_fsdp_module",
    "oprd.head_transfer": "KEY check_head_transfer copy_head_and_norm",
    "oprd.loading": "load_model load_tokenizer teacher_tokenizer_for",
    "oprd.manifest": "MANIFEST sha256_of build_manifest check_manifest",
    "oprd.memory": "delta_peak_bytes",
    "oprd.memory_plan": "GB Shape QWEN25_1_5B QWEN25_7B STATE_BYTES Step plan",
    "oprd.metrics_log": "MetricsLogWarning append read truncate",
    "oprd.model_files": "WEIGHT_FILES TOKENIZER_FILES check_model_dir weight_file_problem",
    "oprd.optim": "OPTIMIZERS PARAM_DTYPES stochastic_round_to_bf16 BF16AdamW build_optimizer CHECKPOINTING_FROM "
                  "uses_gradient_checkpointing",
    "oprd.pairing": "check_widths hidden_size",
    "oprd.preflight": "check_train train_prompts check_pair student_layers model_config check_run_dir check_eval "
                      "one_line",
    "oprd.processes": "TORCHRUN_VARIABLES world_size check_launch",
    "oprd.prompt_format": "CHAT_TEMPLATE_MODES check_chat_template uses_template encode_prompt_texts prompt_ids",
    "oprd.rank_metrics": "reduce_metrics",
    "oprd.rollout": "Rollouts concat_rollouts encode_prompts eos_token_ids response_mask_from generate_rollouts",
    "oprd.run_dir": "RunDirError remove_leftovers previous_outputs prepare_fresh_run",
    "oprd.sft": "sft_batch sft_loss train_sft",
    "oprd.sharding": "shard_model full_model_state full_optimizer_state load_full_state",
    "oprd.student_choice": "StudentChoice CandidateKeeper choose_student",
    "oprd.tokenizer": "SPECIAL_TOKENS DEFAULT_ALPHABET build_char_tokenizer build_bpe_tokenizer",
    "oprd.trainer": "warmup_cosine objective_spec Trainer",  # describe(config), never called, was dropped
}


def test_every_moved_module_is_in_the_table_of_old_paths():
    folders_now = {"oprd.cli", "oprd.demo", "oprd.rollout"}  # old modules that are folders with the same name now
    assert set(OLD_NAMES) == set(MOVED) | folders_now


@pytest.mark.parametrize("old", sorted(OLD_NAMES))
def test_an_old_path_imports_the_moved_module_with_a_warning(old, monkeypatch):
    new = MOVED.get(old)
    if new is None:  # a folder now: its __init__ hands the old names on, with no warning
        module = importlib.import_module(old)
    else:
        monkeypatch.delitem(sys.modules, old, raising=False)  # so that this import goes through the old path again
        with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
            module = importlib.import_module(old)
        assert module is importlib.import_module(new)
    missing = [name for name in OLD_NAMES[old].split() if not hasattr(module, name)]
    assert not missing, f"{old} lost {missing}"


def test_paths_that_never_existed_still_fail():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("oprd.no_such_module")


def test_the_console_script_and_python_m_reach_the_cli():
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name="oprd")
    assert entry.load() is importlib.import_module("oprd.cli.commands").main
    done = subprocess.run([sys.executable, "-m", "oprd.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage: oprd" in done.stdout, done.stderr
