"""The data sets of the grokking trainer: modular arithmetic and k-sparse parity, as full batches of token sequences.

Modular arithmetic (Power et al. 2022): every pair (a, b) of residues mod a prime p, written as the three tokens
``a b =`` (the ``=`` token has id p), labelled (a ∘ b) mod p for ∘ ∈ {+, −, ×, ÷}. Division is a · b⁻¹ mod p and
runs over b ≠ 0 only. The vocabulary is p + 1 tokens, the classes are the p residues, the answer position is the last
one (the ``=`` token).

k-sparse parity (Barak et al. 2022): n random bits written as n tokens (0 or 1) followed by ``=`` (id 2), labelled by
the parity of k of them, chosen by the seed. All 2ⁿ strings when n ≤ 16, otherwise a seeded sample of 2¹⁶ distinct
ones; ``n_samples`` asks for a seeded sample of that many distinct strings instead (long strings with few examples are
what makes parity slow to generalise).

Everything is built on the requested device in one piece: the trainer is full batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

MODULAR_TASKS = ("add", "sub", "mul", "div")
TASKS = MODULAR_TASKS + ("parity",)
_MAX_ENUMERATED_BITS = 16
_MAX_PERMUTED_BITS = 24  # up to here a sample is a prefix of a permutation (≤ 128 MB); beyond, rejection
_MAX_BITS = 62
_MAX_SAMPLES = 2**22  # strings held in memory at once


@dataclass
class Dataset:
    """A full-batch split. ``*_x`` are (N, seq_len) int64 tokens, ``*_y`` are (N,) int64 class labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    vocab_size: int
    n_classes: int
    seq_len: int
    p: Optional[int] = None  # the modulus of a modular task: token ids 0 … p−1 are the residues (for Fourier measures)


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, int(n**0.5) + 1))


def modular_table(task: str, p: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """All inputs ``a b =`` and labels (a ∘ b) mod p, in (a, b) row-major order."""
    if task not in MODULAR_TASKS:
        raise ValueError(f"--task: expected one of {', '.join(MODULAR_TASKS)}, got {task!r}")
    if p < 2:
        raise ValueError(f"--p: expected a modulus >= 2, got {p}")
    if task == "div" and not is_prime(p):
        raise ValueError(f"--p: division mod p needs p prime (every b != 0 invertible), got p={p}")
    a, b = torch.meshgrid(torch.arange(p, device=device), torch.arange(p, device=device), indexing="ij")
    a, b = a.flatten(), b.flatten()
    if task == "add":
        y = (a + b) % p
    elif task == "sub":
        y = (a - b) % p
    elif task == "mul":
        y = (a * b) % p
    else:
        keep = b != 0
        a, b = a[keep], b[keep]
        inverse = torch.tensor([pow(int(v), -1, p) if v else 0 for v in range(p)], device=device)
        y = (a * inverse[b]) % p
    x = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    return x, y


def parity_table(n_bits: int, k: int, seed: int, device: torch.device | str = "cpu",
                 n_samples: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bit strings ``x₁ … xₙ =`` labelled by the parity of k seeded positions: all 2ⁿ of them, or a seeded sample of
    ``n_samples`` distinct ones (0: all when n ≤ 16, else 2¹⁶)."""
    check_n_samples(n_bits, n_samples)
    if not 1 <= k <= n_bits:
        raise ValueError(f"--k: expected 1 <= k <= n_bits ({n_bits}) relevant bits, got k={k}")
    g = torch.Generator().manual_seed(seed)
    relevant = torch.randperm(n_bits, generator=g)[:k]
    if n_samples == 0 and n_bits <= _MAX_ENUMERATED_BITS:
        ints = torch.arange(2**n_bits)
    else:
        ints = _distinct_ints(n_samples or 2**_MAX_ENUMERATED_BITS, n_bits, g)
    bits = (ints[:, None] >> torch.arange(n_bits)) & 1
    y = bits[:, relevant].sum(1) % 2
    x = torch.cat([bits, torch.full((bits.shape[0], 1), 2)], dim=1)
    return x.to(device), y.to(device)


def check_n_samples(n_bits: int, n_samples: int) -> None:
    """Raise a ValueError unless ``n_samples`` distinct strings of ``n_bits`` bits can be drawn (0: the default)."""
    if not 1 <= n_bits <= _MAX_BITS:
        raise ValueError(f"--n-bits: expected 1 … {_MAX_BITS} bits (strings are drawn as int64), got {n_bits}")
    most = min(2**n_bits, _MAX_SAMPLES)
    if not 0 <= n_samples <= most:
        raise ValueError(f"--n-samples: expected 0 (the default) or 1 … {most} distinct {n_bits}-bit strings, got {n_samples}")


def _distinct_ints(n: int, n_bits: int, g: torch.Generator) -> torch.Tensor:
    """``n`` distinct seeded integers in [0, 2ⁿ_bits), in random order (distinct: no string is both in train and test)."""
    if n_bits <= _MAX_PERMUTED_BITS:
        return torch.randperm(2**n_bits, generator=g)[:n]
    seen: dict[int, None] = {}  # insertion-ordered, so the draw order (and hence the split) is seeded
    while len(seen) < n:
        for v in torch.randint(0, 2**n_bits, (n - len(seen),), generator=g).tolist():
            seen.setdefault(v, None)
    return torch.tensor(list(seen)[:n], dtype=torch.int64)


def split(n: int, train_frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(n)`` into train and test indices (both non-empty)."""
    if not 0.0 < train_frac < 1.0:
        raise ValueError(f"--train-frac: expected a fraction strictly between 0 and 1, got {train_frac}")
    n_train = round(train_frac * n)
    if not 0 < n_train < n:
        raise ValueError(f"--train-frac: {train_frac} of {n} examples leaves an empty train or test set")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:n_train], perm[n_train:]


def make_dataset(
    task: str,
    p: int = 59,
    train_frac: float = 0.4,
    seed: int = 0,
    n_bits: int = 10,
    k: int = 3,
    device: torch.device | str = "cpu",
    n_samples: int = 0,
) -> Dataset:
    """The full-batch train/test split of a task. The split (and the parity bits) depend on ``seed`` only."""
    if task == "parity":
        x, y = parity_table(n_bits, k, seed, device, n_samples)
        vocab, classes, modulus = 3, 2, None
    elif task in MODULAR_TASKS:
        x, y = modular_table(task, p, device)
        vocab, classes, modulus = p + 1, p, p
    else:
        raise ValueError(f"--task: expected one of {', '.join(TASKS)}, got {task!r}")
    tr, te = split(x.shape[0], train_frac, seed)
    tr, te = tr.to(x.device), te.to(x.device)
    return Dataset(x[tr], y[tr], x[te], y[te], vocab, classes, x.shape[1], modulus)
