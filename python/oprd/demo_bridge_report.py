"""The Bridge demo's tables (Table-4-like rows, the fit, the rank sweep) and plots (accuracy, cosine against rank)."""

from __future__ import annotations

from pathlib import Path

from oprd.demo_report import _pm, plot_curves

# The paper's Table 4 (best@16 avg, %; Qwen3-4B -> Qwen3-1.7B-Base), PAPER_NOTES section 4.
PAPER_TABLE4 = {"opd_top1": 30.8, "opd_topk": 27.1, "oprd_bridge": 30.8, "oprd_bridge, then opd_top1": 33.9}


def render_bridge_tables(results: dict) -> str:
    t, s = results["teacher_accuracy"], results["student_accuracy"]
    settings = results["settings"]
    base = settings["base"]
    seeds = next((r["seeds"] for r in results["methods"].values() if "seeds" in r), None)
    lines = [f"Bridge demo (a {settings['teacher_layers']}x{settings['teacher_hidden']} teacher, a "
             f"{base['layers']}x{base['hidden']} student; avg@{base['eval_samples']} exact match on "
             f"{base['eval_size']} held-out problems"
             + (f"; mean ± half the range over distillation seeds {seeds}" if seeds else "") + ")", "",
             "| model | accuracy | gap closed | response length | paper Table 4 (best@16) |", "|---|---|---|---|---|",
             f"| teacher | {t:.3f} | | | |", f"| student (before) | {s:.3f} | 0% | | |"]
    for method, r in results["methods"].items():
        paper = PAPER_TABLE4.get(method)
        lines.append(f"| {method} | {_pm(r, 'accuracy')} | {_pm(r, 'gap_closed', True)} | "
                     f"{_pm(r, 'response_length')} | {'' if paper is None else paper} |")
    fit = results["bridge"]
    lines += ["", f"Stage 1 at rank {settings['rank']} ({fit['rows']} rows; held-out cosine in the shared subspace)",
              "", "| student layer | teacher layer | before | after | best epoch |", "|---|---|---|---|---|"]
    lines += [f"| {p['student_layer']} | {p['teacher_layer']} | {p['cosine_before']:.3f} | {p['cosine_after']:.3f} | "
              f"{p['best_epoch']} |" for p in fit["pairs"]]
    lines += ["", "Rank sweep (mean held-out cosine over the layer pairs; the paper: 72% at r=1, >90% from r=4, "
              "95% at r=8)", "", "| rank | cosine |", "|---|---|"]
    lines += [f"| {e['rank']} | {e['cosine']:.3f} |" for e in fit["rank_sweep"]]
    return "\n".join(lines) + "\n"


def plot_bridge(results: dict, directory: Path) -> None:
    """accuracy.png (every run against step) and rank_sweep.png (cosine against rank)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    plot_curves(results, "accuracy_curve", directory / "accuracy.png", "accuracy (avg@k)",
                "Held-out accuracy, teacher of another depth and width", plt)

    sweep = results["bridge"]["rank_sweep"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([e["rank"] for e in sweep], [e["cosine"] for e in sweep], marker="o")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="rank r", ylabel="held-out cosine after Stage 1", title="Cosine in the shared subspace against rank")
    fig.tight_layout()
    fig.savefig(directory / "rank_sweep.png", dpi=100)
    plt.close(fig)
