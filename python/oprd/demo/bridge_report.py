"""The Bridge demo's tables (Table-4-like rows, the fit, the rank sweep) and plots (accuracy, cosine against rank)."""

from __future__ import annotations

from pathlib import Path

from oprd.demo.report import _pm, plot_curves

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
    lines += _fit_tables(results["bridge"], "Stage 1")
    cross = results.get("cross_tokenizer")
    if cross:
        lines += _cross_tables(cross, settings, s)
    return "\n".join(lines) + "\n"


def _fit_tables(fit: dict, title: str) -> list[str]:
    lines = ["", f"{title} at rank {fit['rank']} ({fit['rows']} rows; held-out cosine in the shared subspace)", "",
             "| student layer | teacher layer | before | after | best epoch |", "|---|---|---|---|---|"]
    lines += [f"| {p['student_layer']} | {p['teacher_layer']} | {p['cosine_before']:.3f} | {p['cosine_after']:.3f} | "
              f"{p['best_epoch']} |" for p in fit["pairs"]]
    lines += ["", f"{title}, rank sweep (mean held-out cosine over the layer pairs; the paper: 72% at r=1, >90% from "
              "r=4, 95% at r=8)", "", "| rank | cosine |", "|---|---|"]
    return lines + [f"| {e['rank']} | {e['cosine']:.3f} |" for e in fit["rank_sweep"]]


def _cross_tables(cross: dict, settings: dict, student: float) -> list[str]:
    """The cross-tokenizer pair: its teacher, the Bridge row (OPD cannot cross vocabularies), its fit."""
    lines = ["", f"Across tokenizers (a {settings['teacher_layers']}x{settings['teacher_hidden']} teacher on a "
             f"byte-level BPE of {cross['teacher_vocab']} tokens, the same character-level student; student "
             "positions inside a longer teacher token have no partner and stay out of the loss)", "",
             "| model | accuracy | gap closed | response length | unpaired positions |", "|---|---|---|---|---|",
             f"| teacher (BPE) | {cross['teacher_accuracy']:.3f} | | | |",
             f"| student (before) | {student:.3f} | 0% | | |"]
    for method, r in cross["methods"].items():
        lines.append(f"| {method} | {_pm(r, 'accuracy')} | {_pm(r, 'gap_closed', True)} | "
                     f"{_pm(r, 'response_length')} | {_pm(r, 'unpaired_share', True)} |")
    lines.append("| OPD top-1 / top-16 | not possible: the heads predict different vocabularies | | | |")
    return lines + _fit_tables(cross["bridge"], "Stage 1 across tokenizers")


def plot_bridge(results: dict, directory: Path) -> None:
    """accuracy.png (every run against step), accuracy_cross_tokenizer.png (the cross-tokenizer pair's runs) and
    rank_sweep.png (cosine against rank, both bridges)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    plot_curves(results, "accuracy_curve", directory / "accuracy.png", "accuracy (avg@k)",
                "Held-out accuracy, teacher of another depth and width", plt)

    cross = results.get("cross_tokenizer")
    if cross:
        pair = {**cross, "student_accuracy": results["student_accuracy"]}
        plot_curves(pair, "accuracy_curve", directory / "accuracy_cross_tokenizer.png", "accuracy (avg@k)",
                    "Held-out accuracy, teacher of another tokenizer", plt)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, fit in [("another depth and width", results["bridge"])] + (
            [("another tokenizer", cross["bridge"])] if cross else []):
        ax.plot([e["rank"] for e in fit["rank_sweep"]], [e["cosine"] for e in fit["rank_sweep"]], marker="o",
                label=label)
    ax.legend(fontsize="small")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="rank r", ylabel="held-out cosine after Stage 1", title="Cosine in the shared subspace against rank")
    fig.tight_layout()
    fig.savefig(directory / "rank_sweep.png", dpi=100)
    plt.close(fig)
