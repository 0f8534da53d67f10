"""Pictures of CKA results (matplotlib, the optional extra ``fastcka[plot]``)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("fastcka.plot needs matplotlib: pip install 'fastcka[plot]'") from e
    return plt


def cka_heatmap(
    matrix: torch.Tensor,
    labels: Optional[Sequence[str]] = None,
    col_labels: Optional[Sequence[str]] = None,
    title: str = "CKA",
    path: Optional[str] = None,
    annotate: Optional[bool] = None,
    ax=None,
    row_title: Optional[str] = None,
    col_title: Optional[str] = None,
):
    """Heatmap of a CKA matrix (e.g. from `fastcka.cka_matrix`): rows labelled by ``labels``, columns by
    ``col_labels`` (default: ``labels``), colour scale fixed to [0, 1] so pictures compare across runs, values
    written in the cells when the matrix is small (``annotate``); ``row_title``/``col_title`` label the axes (the
    two models, for :meth:`fastcka.compare.CKAResult.plot`). Saves to ``path`` if given; returns the figure."""
    m = torch.as_tensor(matrix).detach().to("cpu", torch.float64)
    if m.dim() != 2:
        raise ValueError(f"matrix must be 2-D, got shape {tuple(m.shape)}")
    rows = list(labels) if labels is not None else [str(i) for i in range(m.shape[0])]
    cols = list(col_labels) if col_labels is not None else (rows if m.shape[0] == m.shape[1] else [str(j) for j in range(m.shape[1])])
    if len(rows) != m.shape[0] or len(cols) != m.shape[1]:
        raise ValueError(f"{len(rows)} row and {len(cols)} column labels for a matrix of shape {tuple(m.shape)}")
    plt = _pyplot()
    if ax is None:
        side = max(3.0, 0.45 * max(m.shape) + 1.5)
        fig, ax = plt.subplots(figsize=(side + 1.0, side))
    else:
        fig = ax.figure
    im = ax.imshow(m.numpy(), vmin=0.0, vmax=1.0, cmap="magma", origin="upper")
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title(title)
    if row_title:
        ax.set_ylabel(row_title)
    if col_title:
        ax.set_xlabel(col_title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if annotate if annotate is not None else max(m.shape) <= 12:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                v = m[i, j].item()
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
