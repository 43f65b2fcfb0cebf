"""The demo's tables (tables.md) and plots (plots/*.png) from its results.json content."""

from __future__ import annotations

from pathlib import Path

STYLES = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("P", "--")]  # overlapping curves stay visible
COLORS = ["C0", "C1", "C2", "C3", "C4", "C5"]


# The paper's Table 2 (avg@16, %), PAPER_NOTES section 4: teacher JustRL-DeepSeek-1.5B, student R1-Distill-1.5B.
PAPER_TABLE2 = {"teacher": (50.8, 35.6, 79.5), "student": (32.9, 21.9, 62.2), "opd_top1": (42.3, 33.5, 77.0),
                "opd_topk": (47.1, 34.0, 76.5), "oprd": (49.8, 34.6, 79.1)}
PAPER_BENCHMARKS = ("AIME24", "AIME25", "AIMO")


def paper_gap_closed(method: str) -> tuple[float, ...] | None:
    """The share of the student-teacher gap the paper's `method` closed on each benchmark (None: not in Table 2)."""
    if method not in PAPER_TABLE2 or method in ("teacher", "student"):
        return None
    return tuple((m - s) / (t - s) for m, s, t in zip(PAPER_TABLE2[method], PAPER_TABLE2["student"],
                                                      PAPER_TABLE2["teacher"]))


def _mean_cosine(r: dict) -> str:
    layers = r.get("cosine_per_layer") or {}
    return f"{sum(layers.values()) / len(layers):.3f}" if layers else "n/a"


def _pm(r: dict, key: str, percent: bool = False) -> str:
    """`mean ± spread` of a combined entry (just the value for a single-seed one)."""
    if key not in r:
        return ""
    scale, fmt = (100, "{:.0f}%") if percent else (1, "{:.3f}")
    text = fmt.format(scale * r[key])
    spread = r.get(f"{key}_spread")
    return text if not spread else f"{text} ± {fmt.format(scale * spread)}"


def render_tables(results: dict) -> str:
    t, s = results["teacher_accuracy"], results["student_accuracy"]
    settings = results["settings"]
    seeds = next((r["seeds"] for r in results["methods"].values() if "seeds" in r), None)
    lines = [f"Table 2 (accuracy = avg@{settings['eval_samples']} exact match on {settings['eval_size']} held-out "
             "problems" + (f"; mean ± half the range over distillation seeds {seeds}" if seeds else "") + ")"]
    choice = results.get("student_choice")
    if choice:
        lines[0] += (f"; student: SFT step {choice['step']}, chosen at {choice['accuracy']:.3f} against the teacher's "
                     f"{choice['teacher_accuracy']:.3f} on {settings['select_size']} other problems (target ratio "
                     f"{choice['ratio']:g}{'' if choice['reached'] else ', not reached'})")
    distance = results.get("student_head_distance")
    lines += ["", "| model | accuracy | gap closed | through the teacher's head | gap closed so | LM-head distance "
              "| final cosine |", "|---|---|---|---|---|---|---|",
              f"| teacher | {t:.3f} | | | | 0 | |",
              f"| student (before) | {s:.3f} | 0% | | | {'' if distance is None else f'{distance:.3f}'} | |"]
    for method, r in results["methods"].items():
        lines.append(f"| {method} | {_pm(r, 'accuracy')} | {_pm(r, 'gap_closed', True)} | "
                     f"{_pm(r, 'accuracy_teacher_head')} | {_pm(r, 'gap_closed_teacher_head', True)} | "
                     f"{_pm(r, 'head_distance')} | {_mean_cosine(r)} |")
    lines += ["", "LM-head distance: ||W_student - W_teacher|| / ||W_teacher||. Through the teacher's head: the "
              "trained student's hidden states decoded by the teacher's LM head and final norm (OPRD never trains an "
              "untied head).", "", *_paper_comparison(results), "",
              "Table 3 (one CPU process, same step budget; delta-peak of one update, allocator events)", "",
              "| method | wall-clock s | s/step | update delta-peak MB |", "|---|---|---|---|"]
    for method, r in results["methods"].items():
        lines.append(f"| {method} | {r['seconds']:.1f} | {r['seconds_per_step']:.2f} | "
                     f"{r['update_delta_peak_mb']:.1f} |")
    return "\n".join(lines) + "\n"


def _paper_comparison(results: dict) -> list[str]:
    """Gap closed per method, ours beside the paper's Table 2 (AIME24, AIME25, AIMO)."""
    lines = ["Gap closed, this demo beside the paper's Table 2 (Qwen-1.5B math; the demo: a tiny model on addition)",
             "", "| method | this demo | " + " | ".join(f"paper {b}" for b in PAPER_BENCHMARKS) + " |",
             "|---|---|" + "---|" * len(PAPER_BENCHMARKS)]
    for method, r in results["methods"].items():
        paper = paper_gap_closed(method)
        cells = " | ".join(f"{100 * g:.0f}%" for g in paper) if paper else " | ".join("" for _ in PAPER_BENCHMARKS)
        lines.append(f"| {method} | {_pm(r, 'gap_closed', True)} | {cells} |")
    return lines


def plot(results: dict, directory: Path) -> None:
    """accuracy.png and cosine_similarity.png against step, diagnostics.png (own head against the teacher's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    curves = (("accuracy_curve", "accuracy.png", "accuracy (avg@k)", "Held-out accuracy during distillation"),
              ("cosine_curve", "cosine_similarity.png", "rep/cosine_similarity",
               "Student-teacher cosine of the distilled layers"))
    for key, name, ylabel, title in curves:
        plot_curves(results, key, directory / name, ylabel, title, plt)
    _plot_diagnostics(results, directory / "diagnostics.png", plt)


def plot_curves(results: dict, key: str, path: Path, ylabel: str, title: str, plt) -> None:
    """One curve per run of every method against step (`run[key]`: (step, value) pairs), one style and colour per
    method, the later seeds fainter; the accuracy plot also marks the teacher and the student before."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7.5, 4))
    for (method, r), (marker, line), color in zip(results["methods"].items(), STYLES * 4, COLORS * 4):
        for i, run in enumerate(r.get("runs", [r])):
            if run[key]:
                steps, values = zip(*run[key])
                ax.plot(steps, values, marker=marker, linestyle=line, color=color, markevery=max(1, len(steps) // 8),
                        alpha=1.0 if i == 0 else 0.5, label=method if i == 0 else None)
    if key == "accuracy_curve":
        ax.axhline(results["teacher_accuracy"], color="k", linestyle="--", label="teacher")
        ax.axhline(results["student_accuracy"], color="gray", linestyle=":", label="student (before)")
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_diagnostics(results: dict, path: Path, plt) -> None:
    methods = [m for m, r in results["methods"].items() if "accuracy_teacher_head" in r]
    if not methods:
        return
    fig, ax = plt.subplots(figsize=(7.5, 4))
    xs = range(len(methods))
    own = [results["methods"][m]["accuracy"] for m in methods]
    via = [results["methods"][m]["accuracy_teacher_head"] for m in methods]
    ax.bar([x - 0.2 for x in xs], own, width=0.4, label="own LM head")
    ax.bar([x + 0.2 for x in xs], via, width=0.4, hatch="//", label="teacher's LM head and norm")
    ax.axhline(results["teacher_accuracy"], color="k", linestyle="--", label="teacher")
    ax.axhline(results["student_accuracy"], color="gray", linestyle=":", label="student (before)")
    ax.set_xticks(list(xs), methods)
    ax.set(ylabel="accuracy (avg@k)", title="After distillation: own LM head against the teacher's")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
