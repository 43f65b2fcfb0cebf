"""The demo's tables (tables.md) and plots (plots/*.png) from its results.json content."""

from __future__ import annotations

from pathlib import Path

STYLES = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("P", "--")]  # overlapping curves stay visible


def _mean_cosine(r: dict) -> str:
    layers = r.get("cosine_per_layer") or {}
    return f"{sum(layers.values()) / len(layers):.3f}" if layers else "n/a"


def render_tables(results: dict) -> str:
    t, s = results["teacher_accuracy"], results["student_accuracy"]
    settings = results["settings"]
    lines = [f"Table 2 (accuracy = avg@{settings['eval_samples']} exact match on {settings['eval_size']} held-out "
             "problems)"]
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
        via = r.get("accuracy_teacher_head")
        via_cells = f"{via:.3f} | {100 * r['gap_closed_teacher_head']:.0f}%" if via is not None else " | "
        head = f"{r['head_distance']:.3f}" if "head_distance" in r else ""
        lines.append(f"| {method} | {r['accuracy']:.3f} | {100 * r['gap_closed']:.0f}% | {via_cells} | {head} | "
                     f"{_mean_cosine(r)} |")
    lines += ["", "LM-head distance: ||W_student - W_teacher|| / ||W_teacher||. Through the teacher's head: the "
              "trained student's hidden states decoded by the teacher's LM head and final norm (OPRD never trains an "
              "untied head).", "",
              "Table 3 (one CPU process, same step budget; delta-peak of one update, allocator events)", "",
              "| method | wall-clock s | s/step | update delta-peak MB |", "|---|---|---|---|"]
    for method, r in results["methods"].items():
        lines.append(f"| {method} | {r['seconds']:.1f} | {r['seconds_per_step']:.2f} | "
                     f"{r['update_delta_peak_mb']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, directory: Path) -> None:
    """accuracy.png and cosine_similarity.png against step, diagnostics.png (own head against the teacher's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    directory.mkdir(parents=True, exist_ok=True)
    curves = (("accuracy_curve", "accuracy.png", "accuracy (avg@k)", "Held-out accuracy during distillation"),
              ("cosine_curve", "cosine_similarity.png", "rep/cosine_similarity",
               "Student-teacher cosine of the distilled layers"))
    for key, name, ylabel, title in curves:
        fig, ax = plt.subplots(figsize=(7.5, 4))
        for (method, r), (marker, line) in zip(results["methods"].items(), STYLES * 4):
            if r[key]:
                steps, values = zip(*r[key])
                ax.plot(steps, values, marker=marker, linestyle=line, markevery=max(1, len(steps) // 8),
                        label=method)
        if key == "accuracy_curve":
            ax.axhline(results["teacher_accuracy"], color="k", linestyle="--", label="teacher")
            ax.axhline(results["student_accuracy"], color="gray", linestyle=":", label="student (before)")
        ax.set(xlabel="step", ylabel=ylabel, title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        fig.tight_layout()
        fig.savefig(directory / name, dpi=100)
        plt.close(fig)
    _plot_diagnostics(results, directory / "diagnostics.png", plt)


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
