"""Report figures (matplotlib, headless Agg), each written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from smoothcert.artifacts import atomic_path  # noqa: E402
from smoothcert.reporting.tables import MEMORY_ACTIONS, Experiment  # noqa: E402

AXIS = {"l2": "ℓ2 radius (pixel space, [0,1] scale)", "l1": "ℓ1 radius (pixel space, [0,1] scale)"}
STYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3))]
DPI = 110


def save(fig, path: str | Path) -> None:
    """Write ``fig`` atomically as PNG and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)


def _panels(n: int):
    n = max(1, n)
    return plt.subplots(1, n, figsize=(6.2 * n, 4.6), squeeze=False, layout="constrained")


def _norms(curves: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(curves["norm"]))


def curve_panels(
    curves: pd.DataFrame, panels: list[tuple[str, list[tuple[str, str]]]], path, title: str, proxy: bool = False
) -> None:
    """A grid of certified-accuracy panels, one question each: ``panels`` is [(panel title, [(experiment key,
    curve label), …])]; a panel holds the few curves it compares (colors by curve), every panel the same axes."""
    per_row = min(3, max(1, len(panels)))
    rows = -(-len(panels) // per_row)
    fig, axes = plt.subplots(
        rows, per_row, figsize=(max(6.4, 4.6 * per_row), 3.6 * rows), squeeze=False, layout="constrained", sharey=True
    )
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (name, shown) in zip(axes.flat, panels):
        norm, right = None, 0.0
        for i, (key, label) in enumerate(shown):
            c = curves[curves["experiment"] == key]
            norm = c["norm"].iloc[0] if len(c) else norm
            certified = c.loc[c["certified_accuracy"] > 0, "radius"]
            right = max(right, float(certified.max()) if len(certified) else 0.0)
            ax.plot(
                c["radius"],
                c["certified_accuracy"],
                color=plt.get_cmap("tab10")(i % 10),
                linestyle=STYLES[i // 10 % len(STYLES)],
                label=label,
                linewidth=1.6,
            )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(("proxy " if proxy else "") + AXIS.get(norm, f"{norm} radius"), fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_xlim(0, 1.08 * right if right > 0 else None)  # each panel spans the radii its curves certify
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="upper right")
    for row in axes:
        row[0].set_ylabel("proxy accuracy (not certified)" if proxy else "certified accuracy", fontsize=8)
    fig.suptitle(title)
    save(fig, path)


def _label(e: Experiment, many: bool) -> str:
    """One line naming an experiment within its norm: method, σ, and the training where several differ."""
    return f"{e.method} · σ={e.sigma:g}" + (f" · {e.objective}/{e.sigma_mode}" if many else "")


def log_volume(experiments: list[Experiment], path, title: str) -> None:
    """Per norm (one panel each, stacked): horizontal box plots of the log-volume of certified regions (certified
    correct inputs), one row per experiment with its label on one line, so labels never overlap."""
    norms = list(dict.fromkeys(e.norm for e in experiments))
    many = len({(e.objective, e.sigma_mode) for e in experiments}) > 1
    rows = {norm: [] for norm in norms}
    for e in experiments:
        if "log_volume" not in e.table:
            continue
        t = e.table
        ok = (t["correct"] > 0) & (t["predict"] >= 0)
        lv = t.loc[ok, "log_volume"].to_numpy(dtype=float)
        lv = lv[np.isfinite(lv)]
        if len(lv):
            rows[e.norm].append((_label(e, many), lv))
    heights = [max(1.2, 0.32 * len(rows[n]) + 0.9) for n in norms] or [1.2]
    fig, axes = plt.subplots(
        max(1, len(norms)),
        1,
        figsize=(9, sum(heights) + 0.6),
        squeeze=False,
        layout="constrained",
        gridspec_kw={"height_ratios": heights},
    )
    for ax, norm in zip(axes[:, 0], norms):
        if rows[norm]:
            labels, data = zip(*rows[norm][::-1])  # first experiment on top
            ax.boxplot(data, tick_labels=labels, orientation="horizontal", flierprops={"markersize": 2})
            ax.tick_params(axis="y", labelsize=8)
        else:
            ax.text(0.5, 0.5, "no certified volumes", ha="center", va="center", transform=ax.transAxes)
            ax.set_yticks([])
        ax.set_xlabel(
            f"log volume of the certified {AXIS.get(norm, norm).split(' radius')[0]} region "
            "(nats, pixel space, [0,1] scale)",
            fontsize=8,
        )
        ax.set_title(f"{norm}: certified correct inputs", fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(title)
    save(fig, path)


def draws(experiments: list[Experiment], path, title: str, per_row: int = 4) -> None:
    """One panel per experiment whose inputs used different numbers of draws: a histogram of the estimation
    draws per input (log₂ bins), certified inputs and abstentions stacked, the mean in the title."""
    shown = [e for e in experiments if "n" in e.table and e.table["n"].nunique() > 1]
    rows = -(-len(shown) // per_row)
    cols = min(per_row, len(shown))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(shown) :]:
        ax.axis("off")
    for ax, e in zip(axes.flat, shown):
        n = e.table["n"].to_numpy(dtype=float)
        ok = e.table["predict"].to_numpy() >= 0
        bins = 2.0 ** np.arange(np.floor(np.log2(n.min())), np.ceil(np.log2(n.max())) + 1.5) if n.min() > 0 else 10
        ax.hist([n[ok], n[~ok]], bins=bins, stacked=True, label=["certified", "abstained"])
        ax.set_xscale("log", base=2)
        ax.set_title(f"{e.method} σ={e.sigma:g} {e.norm}\nmean {n.mean():,.0f} draws", fontsize=8)
        ax.set_xlabel("estimation draws", fontsize=8)
        ax.tick_params(labelsize=7)
    if shown:
        axes.flat[0].set_ylabel("inputs")
        axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    save(fig, path)


def memory_effect(mem: pd.DataFrame, path, title: str) -> None:
    """Per memory experiment (one row each, labelled on one line): certified accuracy at r = 0 and ACR before and
    after the memory step, and the stacked counts of memory actions; legends above the panels, off the bars."""
    n = len(mem)
    labels = [f"{r.method} · {r.model_id}" for r in mem.itertuples()][::-1]  # first experiment on top
    y = np.arange(n)
    h = 0.38
    fig, axes = plt.subplots(
        1, 3, figsize=(15, 0.42 * n + 1.9), sharey=True, layout="constrained", gridspec_kw={"wspace": 0.02}
    )
    for ax, metric, name in (
        (axes[0], "acc@0", "certified accuracy at r = 0"),
        (axes[1], "acr", "average certified radius (ACR)"),
    ):
        before, after = mem[f"before_{metric}"].to_numpy()[::-1], mem[f"after_{metric}"].to_numpy()[::-1]
        ax.barh(y + h / 2, before, h, label="before memory (certify.tsv)", color="tab:gray")
        ax.barh(y - h / 2, after, h, label="after memory (final.tsv)", color="tab:blue")
        ax.set_xlabel(name, fontsize=8)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(y, labels, fontsize=8)
    axes[0].legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=2, frameon=False)
    left = np.zeros(n)
    colors = {"none": "tab:green", "inside": "tab:olive", "shrunk": "tab:orange", "abstained": "tab:red"}
    for action in MEMORY_ACTIONS:
        counts = mem[action].to_numpy(dtype=float)[::-1]
        axes[2].barh(y, counts, left=left, label=action, color=colors[action])
        left += counts
    axes[2].set_xlabel("test inputs, by what the memory step did", fontsize=8)
    axes[2].legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=4, frameon=False)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(title)
    save(fig, path)


def theta_maps(panels: list[dict], path, title: str, per_row: int = 3) -> None:
    """Pairs of (image, per-pixel θ map); each dict: image (C,H,W) in [0,1], theta (C,H,W), caption, experiment."""
    cols = min(per_row, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(6.6 * cols, 3.3 * rows), squeeze=False, layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for k, p in enumerate(panels):
        a, b = axes[k // cols, 2 * (k % cols)], axes[k // cols, 2 * (k % cols) + 1]
        img = np.asarray(p["image"], dtype=float)
        if img.shape[0] == 1:
            a.imshow(img[0], cmap="gray", vmin=0, vmax=1)
        else:
            a.imshow(np.clip(img.transpose(1, 2, 0), 0, 1))
        a.set_title(p["caption"], fontsize=8)
        theta = np.asarray(p["theta"], dtype=float)
        im = b.imshow(theta.mean(0), cmap="magma")
        b.set_title(
            "θ per pixel" + (" (mean over channels)" if theta.shape[0] > 1 else "") + f"\n{p['experiment']}", fontsize=8
        )
        fig.colorbar(im, ax=b, fraction=0.046, pad=0.04).set_label("θ (noise scale, [0,1] pixels)", fontsize=7)
    fig.suptitle(title)
    save(fig, path)


def training(metrics: dict[str, pd.DataFrame], path, title: str) -> None:
    """Per epoch, one panel each: training loss, test accuracy of the base classifier on clean inputs, and under
    its training noise; one line (color and dash) per model, named once in a legend beside the panels."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
    for i, (model_id, m) in enumerate(metrics.items()):
        style = {"color": plt.get_cmap("tab10")(i % 10), "linestyle": STYLES[i // 10 % len(STYLES)], "linewidth": 1.4}
        axes[0].plot(m["epoch"], m["train_loss"], label=model_id, **style)
        axes[1].plot(m["epoch"], m["test_clean_acc"], **style)
        axes[2].plot(m["epoch"], m["test_noisy_acc"], **style)
    for ax, name in zip(axes, ("training loss", "test accuracy, clean inputs", "test accuracy under training noise")):
        ax.set_title(name, fontsize=9)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in axes[1:]:
        ax.set_ylim(0, 1.02)
    fig.legend(loc="outside right center", fontsize=8, title="model", title_fontsize=8)
    fig.suptitle(title)
    save(fig, path)
