"""A small decoder-only transformer for the grokking tasks, readable at one sitting.

The model reads a token sequence (``a b =`` for modular arithmetic) and predicts the answer's class from the residual
stream at the last position, the *answer position*. ``model.blocks[i]`` is the i-th block; its output is the
residual stream after block i, and ``output[:, -1]`` is that stream at the answer position — the activation whose
inter-layer CKA (Ô01: block 0 against block 1) the trainer watches. ``forward`` also returns these answer-position
residuals directly, so nothing needs a hook.

Speed (the training step is the whole cost of a grokking study). ``forward(tokens, fast=True)`` computes exactly the
same function as the plain forward (tested to 1e-10 in float64) with two causal-attention shortcuts:

* the last block computes only the answer position: its keys and values still cover every position, but its query,
  attention output and MLP run for one position instead of ``seq_len``;
* block 0 at position 0 sees only its own token (causal attention over a single key), so its output is a function of
  that token alone: it is computed once per vocabulary entry and looked up.

In the fast forward the hook on ``blocks[0]`` sees positions 1 … T−1 and the hook on the last block sees the answer
position only; ``output[:, -1]`` is the answer position in both forwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

POS_EMBEDDINGS = ("learned", "sinusoidal", "none")
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


@dataclass
class ModelConfig:
    vocab_size: int
    n_classes: int
    seq_len: int
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    layer_norm: bool = False  # pre-LN blocks and a final LayerNorm when True; no normalisation at all when False
    pos_emb: str = "learned"  # learned | sinusoidal | none
    act: str = "relu"  # relu | gelu

    def __post_init__(self) -> None:
        if self.n_layers < 1:
            raise ValueError(f"--n-layers: expected at least 1 block, got {self.n_layers}")
        if self.d_model % self.n_heads:
            raise ValueError(f"--n-heads: d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.pos_emb not in POS_EMBEDDINGS:
            raise ValueError(f"--pos-emb: expected one of {', '.join(POS_EMBEDDINGS)}, got {self.pos_emb!r}")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"--act: expected one of {', '.join(ACTIVATIONS)}, got {self.act!r}")
        if self.seq_len < 2:
            raise ValueError(f"seq_len: expected at least 2 positions, got {self.seq_len}")


def _norm(cfg: ModelConfig) -> nn.Module:
    return nn.LayerNorm(cfg.d_model) if cfg.layer_norm else nn.Identity()


class Attention(nn.Module):
    """Causal multi-head self-attention whose queries may start at position ``q_start`` (keys always start at 0)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.register_buffer("causal", torch.ones(cfg.seq_len, cfg.seq_len, dtype=torch.bool).tril(), persistent=False)

    def forward(self, x: torch.Tensor, q_start: int = 0) -> torch.Tensor:
        B, T, D = x.shape
        heads = lambda t: t.view(B, -1, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, d_head)
        q = heads(self.q(x[:, q_start:]))
        k, v = (heads(t) for t in self.kv(x).split(D, dim=-1))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)  # (B, H, T − q_start, T)
        att = att.masked_fill(~self.causal[q_start:T, :T], float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T - q_start, D)
        return self.out(y)


class Block(nn.Module):
    """x ↦ x + attn(ln₁ x); then h ↦ h + mlp(ln₂ h). Returns positions ``q_start`` … T−1 only."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1, self.ln2 = _norm(cfg), _norm(cfg)
        self.attn = Attention(cfg)
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.fc_out = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.act = ACTIVATIONS[cfg.act]

    def forward(self, x: torch.Tensor, q_start: int = 0) -> torch.Tensor:
        h = x[:, q_start:] + self.attn(self.ln1(x), q_start)
        return h + self.fc_out(self.act(self.fc_in(self.ln2(h))))


def sinusoidal(seq_len: int, d_model: int) -> torch.Tensor:
    pos = torch.arange(seq_len, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    pe = torch.zeros(seq_len, d_model, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)[:, : d_model // 2]
    return pe.float()


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.pos_emb == "learned":
            self.pos_emb = nn.Parameter(torch.randn(cfg.seq_len, cfg.d_model) / math.sqrt(cfg.d_model))
        else:
            pe = sinusoidal(cfg.seq_len, cfg.d_model) if cfg.pos_emb == "sinusoidal" else torch.zeros(cfg.seq_len, cfg.d_model)
            self.register_buffer("pos_emb", pe)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = _norm(cfg)
        self.unembed = nn.Linear(cfg.d_model, cfg.n_classes, bias=False)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok_emb(tokens) + self.pos_emb[: tokens.shape[1]]

    def forward(self, tokens: torch.Tensor, fast: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B, n_classes) at the answer position, and the residual stream at the answer position after
        each block, a list of n_layers tensors (B, d_model)."""
        forward = self._forward_fast if fast else self._forward_plain
        resid = forward(tokens)
        return self.unembed(self.ln_f(resid[-1])), resid

    def _forward_plain(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        h, resid = self.embed(tokens), []
        for block in self.blocks:
            h = block(h)
            resid.append(h[:, -1])
        return resid

    def _forward_fast(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        h, resid, T = self.embed(tokens), [], tokens.shape[1]
        last = len(self.blocks) - 1
        if last == 0:  # a single block is also the last: the answer position only
            return [self.blocks[0](h, q_start=T - 1)[:, -1]]
        # Block 0 at position 0 depends on its token alone: one row per vocabulary entry, looked up. (.forward, not
        # __call__, so that a hook on blocks[0] fires once per forward, on the batch.)
        vocab = torch.arange(self.cfg.vocab_size, device=tokens.device)[:, None]
        # (F.embedding, not indexing: indexing's backward accumulates in a thread-dependent order on the CPU.)
        first = F.embedding(tokens[:, :1], self.blocks[0].forward(self.embed(vocab))[:, 0])  # (B, 1, D)
        h = torch.cat([first, self.blocks[0](h, q_start=1)], dim=1)
        resid.append(h[:, -1])
        for i, block in enumerate(self.blocks[1:], start=1):
            h = block(h, q_start=T - 1 if i == last else 0)
            resid.append(h[:, -1])
        return resid
