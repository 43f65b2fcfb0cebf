"""Why OPRD-Bridge lowers the demo's student (docs/bridge.md): variants of Stage 1 and Stage 2 on a finished
`oprd demo --bridge` directory, with the demo's own distillation settings and seed 0.

    python scripts/bridge_probe.py --demo oprd-demo-bridge --out bridge-probe      # about 5 minutes on 2 CPU cores

Stage 1: the rank-8 held-out cosine at the paper's lr 1e-3 and the demo's 1e-2, on the demo's collected rows.
Stage 2: from the demo's student and Bridge teacher, 200 steps each of OPD top-1, OPRD-Bridge (the demo's run),
Bridge at lr 5e-5, rank-32 and rank-64 bridges (64: every direction of the student's states constrained), Bridge
without the final (post-norm) layer pair, and oprd_bridge+opd with mu = 1. Prints and writes probe.json.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from transformers import LlamaForCausalLM

from oprd.bridge import save_bridge
from oprd.bridge.fit import fit_collected
from oprd.demo.distill import distill_config
from oprd.demo.settings import DemoRun, DemoSettings
from oprd.demo.stage import prepare
from oprd.train.trainer import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", required=True, help="the output directory of `oprd demo --bridge`")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    demo, out = Path(args.demo), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = DemoSettings(**{k: v for k, v in json.loads((demo / "results.json").read_text())["settings"]["base"]
                               .items() if k not in ("methods", "teacher_head_methods")})
    stage = prepare(replace(settings, out=str(out / "stage")), progress=False)  # the demo's prompts and task
    results: dict = {"stage1": {}, "stage2": {}}
    for lr in (1e-3, 1e-2):
        _, report, _ = fit_collected(demo / "bridge_rows", rank=8, lr=lr, seed=settings.seed)
        results["stage1"][f"lr {lr:g}"] = [round(pair["cosine_after"], 3) for pair in report["pairs"]]
    ranked = {}
    for rank in (32, 64):
        wide, report, _ = fit_collected(demo / "bridge_rows", rank=rank, lr=1e-2, seed=settings.seed)
        ranked[rank] = save_bridge(wide, out / f"bridge_rank{rank}.safetensors")
        results["stage1"][f"rank {rank}"] = [round(pair["cosine_after"], 3) for pair in report["pairs"]]
    bridge = demo / "bridge.safetensors"
    no_final = ",".join(str(i) for i in range(1, settings.layers))  # every block output but the post-norm last
    variants = [("opd_top1", "opd_top1", ()), ("oprd_bridge (the demo's)", "oprd_bridge", (f"bridge.path={bridge}",)),
                ("oprd_bridge, lr 5e-5", "oprd_bridge", (f"bridge.path={bridge}", "optim.lr=5e-5")),
                ("oprd_bridge, rank 32", "oprd_bridge", (f"bridge.path={ranked[32]}",)),
                ("oprd_bridge, rank 64", "oprd_bridge", (f"bridge.path={ranked[64]}",)),
                ("oprd_bridge, no final layer", "oprd_bridge", (f"bridge.path={bridge}", f"oprd.layers={no_final}")),
                ("oprd_bridge+opd, mu 1", "oprd_bridge+opd", (f"bridge.path={bridge}", "method.mu=1"))]
    teacher = LlamaForCausalLM.from_pretrained(demo / "models" / "bridge_teacher").eval()
    for label, method, overrides in variants:
        run = DemoRun(label, method, False, overrides)
        config = distill_config(settings, run, settings.seed, out / "runs" / label.replace(" ", "_"), stage.task)
        student = LlamaForCausalLM.from_pretrained(demo / "models" / "student")
        last = Trainer(config, student, teacher, stage.tokenizer, stage.prompts, stage.eval_set,
                       grader=stage.task.grade).run(progress=False, overwrite=True)
        results["stage2"][label] = {"accuracy": last["eval/accuracy"], "bridge_cosine": last.get("rep/bridge_cosine")}
        print(label, results["stage2"][label], flush=True)
    print(json.dumps(results, indent=2))
    (out / "probe.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
