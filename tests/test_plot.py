"""The CKA heatmap renders a real matrix to a PNG and rejects bad shapes."""

import pytest
import torch

import fastcka

pytest.importorskip("matplotlib")
from fastcka.plot import cka_heatmap  # noqa: E402


def test_heatmap_writes_png(tmp_path):
    xs = [torch.randn(50, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    m = fastcka.cka_matrix(xs)
    path = tmp_path / "h.png"
    fig = cka_heatmap(m, ["a", "b", "c"], path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes[0].texts) == 9


def test_heatmap_bad_labels():
    with pytest.raises(ValueError, match="labels"):
        cka_heatmap(torch.eye(3), ["a", "b"])
    with pytest.raises(ValueError, match="2-D"):
        cka_heatmap(torch.ones(3))
