"""The per-image table that the reference scripts (bench/*_reference.py) print after a run: numpy only,
so that the torch and the tf-keras reference processes can both import it."""
from __future__ import annotations

import numpy as np


def print_summary(names: list[str], scores: list[np.ndarray], classes: list[np.ndarray],
                  mask_probs: list[np.ndarray]) -> None:
    """One line per image: detections, distinct scores, score range, smallest gap between two scores,
    distinct classes, and the fraction of mask-probability cells over 0.5."""
    width = max(12, *(len(n) for n in names))
    print(f"{'image':<{width}} {'detections':>10} {'distinct':>8} {'min score':>10} {'max score':>10} "
          f"{'min gap':>9} {'classes':>7} {'mask fg':>7}")
    for name, s, c, m in zip(names, scores, classes, mask_probs):
        s = np.sort(s)
        gap = np.diff(s).min() if len(s) > 1 else float("nan")
        print(f"{name:<{width}} {len(s):>10} {len(np.unique(s)):>8} {s.min():>10.4f} {s.max():>10.4f} "
              f"{gap:>9.2e} {len(np.unique(c)):>7} {(m > 0.5).mean():>7.2f}")
