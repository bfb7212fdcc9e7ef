"""Magnitude pruning of ``[out, in]`` weights: unstructured, block (RxC tiles) or N:M.

Shared by the ``prune`` pass and by ``sparsec.models`` builders of pruned test models.
"""

from __future__ import annotations

import numpy as np


def magnitude_prune(weight: np.ndarray, sparsity: float, block: tuple[int, int] = (1, 1),
                    nm: tuple[int, int] | None = None) -> np.ndarray:
    """A copy of ``weight`` ([out, in]) with the smallest entries zeroed.

    block: zero whole RxC tiles (R outputs x C inputs) by their L2 norm, ``sparsity`` of them;
    nm: keep the N largest of every M consecutive inputs (``sparsity`` is then 1 - N/M).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    weight = np.array(weight, copy=True)
    rows, cols = weight.shape
    if nm is not None:
        n, m = nm
        if cols % m:
            raise ValueError(f"N:M {n}:{m} needs the input dim ({cols}) divisible by {m}")
        groups = weight.reshape(rows, cols // m, m)
        order = np.argsort(np.abs(groups), axis=2)  # ascending: drop the m - n smallest
        np.put_along_axis(groups, order[:, :, : m - n], 0.0, axis=2)
        return groups.reshape(rows, cols)
    r, c = block
    if rows % r or cols % c:
        raise ValueError(f"block {r}x{c} does not tile a [{rows}, {cols}] weight")
    tiles = weight.reshape(rows // r, r, cols // c, c)
    norms = np.sqrt((tiles.astype(np.float64) ** 2).sum(axis=(1, 3)))
    drop = int(round(sparsity * norms.size))
    if drop:
        flat = np.argsort(norms, axis=None, kind="stable")[:drop]
        mask = np.ones(norms.size, bool)
        mask[flat] = False
        tiles *= mask.reshape(norms.shape)[:, None, :, None]
    return tiles.reshape(rows, cols)
