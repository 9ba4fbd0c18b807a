"""Report figures are readable: no tick label overlaps another or leaves the figure, and the training legend
sits beside the panels, not over their lines (what one used to see in log_volume.png, memory_effect.png and
training.png with a default run's 17 experiments and 8 models)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from smoothcert.reporting import plots
from smoothcert.reporting.tables import MEMORY_ACTIONS, Experiment


@pytest.fixture
def captured(monkeypatch):
    figs = []
    monkeypatch.setattr(plots, "save", lambda fig, path: figs.append(fig))
    yield figs
    for fig in figs:
        plots.plt.close(fig)


def _experiments(n: int = 17) -> list[Experiment]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        norm = "l1" if i % 5 == 4 else "l2"
        table = pd.DataFrame(
            {"correct": 1, "predict": 1, "log_volume": rng.normal(-150, 30, 40), "radius": rng.uniform(0, 1, 40)}
        )
        method = ["cohen", "ddrs", "ancer", "smooth_reduce_max", "smooth_reduce_mean"][i % 5]
        objective = ["gaussian", "macer", "smoothadv"][i % 3]
        out.append(Experiment(f"{objective}-fixed-{norm}-0.25", objective, "fixed", method, 0.25, norm, table))
    return out


def _boxes(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        for labels, (lo, hi), coord in (
            (ax.get_xticklabels(), sorted(ax.get_xlim()), 0),
            (ax.get_yticklabels(), sorted(ax.get_ylim()), 1),
        ):  # the labels drawn: those of ticks inside the axis' view
            shown = [t for t in labels if t.get_text() and lo <= t.get_position()[coord] <= hi]
            yield [t.get_window_extent(renderer) for t in shown]


def _assert_readable(fig):
    width, height = fig.bbox.width, fig.bbox.height
    for boxes in _boxes(fig):
        for a, b in itertools.combinations(boxes, 2):
            assert not a.overlaps(b), "two tick labels overlap"
        for box in boxes:
            assert box.x0 >= -1 and box.y0 >= -1 and box.x1 <= width + 1 and box.y1 <= height + 1, "label cut off"


def test_log_volume_labels_do_not_overlap(captured):
    plots.log_volume(_experiments(), "unused.png", "log-volume")
    _assert_readable(captured[0])


def test_memory_effect_labels_do_not_overlap(captured):
    rows = []
    for i, e in enumerate(_experiments(10)):
        rows.append(
            {
                "model_id": e.model_id,
                "method": e.method,
                "before_acc@0": 0.8,
                "after_acc@0": 0.79,
                "before_acr": 0.5,
                "after_acr": 0.49,
                **{a: i + k for k, a in enumerate(MEMORY_ACTIONS)},
            }
        )
    plots.memory_effect(pd.DataFrame(rows), "unused.png", "memory")
    _assert_readable(captured[0])


def test_training_legend_beside_the_panels(captured):
    metrics = {
        f"model-{i}": pd.DataFrame(
            {
                "epoch": [1, 2, 3],
                "train_loss": [2, 1, 0.5],
                "test_clean_acc": [0.5, 0.7, 0.9],
                "test_noisy_acc": [0.4, 0.6, 0.8],
            }
        )
        for i in range(8)
    }
    plots.training(metrics, "unused.png", "training")
    fig = captured[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    assert len(legend.get_texts()) == 8, "each model named once"
    box = legend.get_window_extent(renderer)
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer)), "the legend covers a panel"
