"""Image grids for Figs. 3-5: one row per model, written as PNG + PDF atomically.

Layouts (columns repeat in one block per seed image / anchor pair):
- fig3: [seed, unit u1, ..., unit uK] per seed image.
- fig4: [anchor x1, lambda = l_max, ..., lambda = l_min, anchor x2] per pair (lambda weighs x1's representation).
- fig5: [original (true label), -> target 1, ..., -> target T] per image.

Matplotlib's object API (Figure + Agg canvas), not pyplot: no global figure registry, no GUI backend, and
figures are garbage-collected without plt.close.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from workloads import layout

CELL_INCHES = 1.1


@dataclass
class FigureGrid:
    """A figure's cells: images[r][c] (C, H, W) in [0, 1], a title per cell, a label per row."""

    images: list[list[Tensor]]
    titles: list[list[str]]
    row_labels: list[str]

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.images), len(self.images[0]) if self.images else 0


def _to_numpy(img: Tensor) -> np.ndarray:
    arr = img.detach().float().clamp(0, 1).cpu().numpy()
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)


def render(grid: FigureGrid, title: str = "") -> Figure:
    """A Figure with an nrows x ncols grid of image axes (ticks off, titles small, row labels on the left)."""
    nrows, ncols = grid.shape
    # each row gets room for its cells' titles, so they never overlap the row above
    fig = Figure(figsize=(CELL_INCHES * ncols + 0.8, (CELL_INCHES + 0.25) * nrows + (0.4 if title else 0.1)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for r in range(nrows):
        for c in range(ncols):
            ax = axes[r, c]
            img = grid.images[r][c]
            ax.imshow(_to_numpy(img), cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(grid.titles[r][c], fontsize=6, pad=2)
        axes[r, 0].set_ylabel(grid.row_labels[r], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout(pad=0.3, h_pad=0.6)
    return fig


def write(grid: FigureGrid, stem: str | os.PathLike[str], title: str = "") -> Figure:
    """Render and write <stem>.png and <stem>.pdf; returns the Figure (axes grid = grid.shape)."""
    fig = render(grid, title)
    for fmt in ("png", "pdf"):
        layout.savefig_atomic(fig, f"{stem}.{fmt}", format=fmt, dpi=150)
    return fig


# ---------------------------------------------------------------------------------------------
# The three layouts, from features.pt content (see workloads.kinds.visualize.raw_tensors).


def _row_label(run_id: str, method: str) -> str:
    return f"{method}\n{run_id}" if method != run_id else run_id


def fig3_grid(raw: dict[str, Any]) -> FigureGrid:
    seeds, classes = raw["seeds"], raw["classes"]
    images, titles, labels = [], [], []
    for rid, m in raw["models"].items():
        row, trow = [], []
        units = m["units"].tolist()  # per model (the same indices when feature sizes agree)
        for i in range(len(seeds)):
            row += [seeds[i], *m["vis"][i]]
            seed_title = "noise" if raw.get("seed_kind") == "noise" else f"seed: {classes[int(raw['seed_labels'][i])]}"
            trow += [seed_title, *(f"unit {u}" for u in units)]
        images.append(row)
        titles.append(trow)
        labels.append(_row_label(rid, m["method"]))
    return FigureGrid(images, titles, labels)


def fig4_grid(raw: dict[str, Any]) -> FigureGrid:
    lambdas = raw["lambdas"].tolist()
    order = sorted(range(len(lambdas)), key=lambda i: -lambdas[i])  # x1 side first
    images, titles, labels = [], [], []
    for rid, m in raw["models"].items():
        row, trow = [], []
        for p in range(len(raw["x1"])):
            row += [raw["x1"][p], *(m["interp"][p][i] for i in order), raw["x2"][p]]
            trow += ["x1", *(f"λ={lambdas[i]:g}" for i in order), "x2"]
        images.append(row)
        titles.append(trow)
        labels.append(_row_label(rid, m["method"]))
    return FigureGrid(images, titles, labels)


def fig5_grid(raw: dict[str, Any]) -> FigureGrid:
    classes, targets = raw["classes"], raw["targets"]
    originals = raw["originals"]
    images, titles, labels = [], [], []
    for rid, m in raw["models"].items():
        row, trow = [], []
        for i in range(len(targets)):
            row += [originals[i], *m["large"][i]]
            trow += [classes[int(raw["seed_labels"][i])], *(f"→ {classes[int(t)]}" for t in targets[i])]
        images.append(row)
        titles.append(trow)
        labels.append(_row_label(rid, m["method"]))
    return FigureGrid(images, titles, labels)


FIGURES = {
    "fig3": (fig3_grid, "Direct feature visualisation: seed, then maximised units"),
    "fig4": (fig4_grid, "Representation interpolation between x1 and x2"),
    "fig5": (fig5_grid, "Large targeted perturbations: original, then towards each target"),
}


def draw_all(raw: dict[str, Any], out_dir: str | os.PathLike[str], names: Sequence[str] = tuple(FIGURES)) -> dict:
    """Write <out_dir>/<name>.png/.pdf for each figure; returns {name: (nrows, ncols)} as drawn."""
    shapes = {}
    for name in names:
        make, title = FIGURES[name]
        grid = make(raw)
        fig = write(grid, Path(out_dir) / name, title)
        subplot = fig.axes[0].get_subplotspec()
        assert subplot is not None, "write() lays the axes out on a grid"
        shapes[name] = subplot.get_gridspec().get_geometry()
    return shapes
