"""Which points to build Winograd F(4, 3) on: the float32 error of each choice, simulated.

    python bench/winograd_points.py [--channels 256] [--tiles 400]

F(4, 3) is built on five finite points and infinity (Lavin and Gray, 2016, use 0, +-1, +-2); the
transforms' coefficients, and so the float32 rounding they amplify, depend on the choice
(Barabasz et al., 2020). Here 0, 1, -1 and every pair of two more points from small fractions:
A^T and G from the points, B^T solved from the identity A^T [(G g) . (B^T d)] = g * d, then a
3x3 convolution of post-ReLU random inputs (C channels, K = 64 outputs) computed the way
models/winograd.py does (input transform in float32, kernel transform in float64 rounded to
float32, float32 products summed over C, output transform in float32) against the float64 one;
F(2, 3) and the float32 direct convolution (one matmul over the 9 C taps) beside them. Error: the
largest and the root-mean-square difference as fractions of the largest output. Prints the table
(best first) and writes bench/results/winograd_points.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = [Fraction(v) for v in ("2", "-2", "1/2", "-1/2", "3", "-3", "3/2", "-3/2", "2/3", "-2/3", "4", "-4",
                                    "1/4", "-1/4")]


def transforms(points: list[Fraction], m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A^T (m, n), G (n, 3), B^T (n, n) of F(m, 3) on `points` (n - 1 finite ones) and infinity."""
    n = m + 2
    at = np.array([[float(p) ** k for p in points] + [1.0 if k == m - 1 else 0.0] for k in range(m)])
    norms = [np.prod([float(p - q) for q in points if q != p]) for p in points]
    g = np.array([[float(p) ** j / norm for j in range(3)] for p, norm in zip(points, norms)] + [[0, 0, 1]])
    # sum_i A^T[k, i] G[i, j] B^T[i, l] = [l == k + j] for every k, j, l: linear in B^T
    rows = np.einsum("ki,ij->kji", at, g).reshape(m * 3, n)
    want = np.array([[1.0 if l == k + j else 0.0 for l in range(n)] for k in range(m) for j in range(3)])
    bt = np.linalg.lstsq(rows, want, rcond=None)[0]
    assert np.abs(rows @ bt - want).max() < 1e-9, points
    return at, g, bt


def errors(at, g, bt, tiles: np.ndarray, kernel: np.ndarray) -> tuple[float, float]:
    """(largest, rms) error / largest output of F(m, 3) over `tiles` (T, m + 2, m + 2, C), `kernel` (3, 3, C, K)."""
    m = at.shape[0]
    bt32, at32 = bt.astype(np.float32), at.astype(np.float32)
    v = np.einsum("ia,tabc,jb->ijtc", bt32, tiles, bt32, dtype=np.float32)
    u = np.einsum("ir,rsck,js->ijck", g, kernel.astype(np.float64), g).astype(np.float32)
    a, c, k = m + 2, tiles.shape[-1], kernel.shape[-1]
    products = np.matmul(v.reshape(a * a, -1, c), u.reshape(a * a, c, k)).reshape(a, a, -1, k)
    y = np.einsum("ki,ijtc,lj->tklc", at32, products, at32, dtype=np.float32)
    return compare(y, exact(tiles, kernel, m))


def exact(tiles: np.ndarray, kernel: np.ndarray, m: int) -> np.ndarray:
    """(T, m, m, K) float64 'VALID' convolution of each tile."""
    windows = np.stack([tiles[:, i:i + m, j:j + m] for i in range(3) for j in range(3)], 3)   # T, m, m, 9, C
    return np.einsum("tyxsc,sck->tyxk", windows.astype(np.float64), kernel.reshape(9, *kernel.shape[2:]))


def compare(y: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    scale = np.abs(want).max()
    return float(np.abs(y - want).max() / scale), float(np.sqrt(((y - want) ** 2).mean()) / scale)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--tiles", type=int, default=400)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "winograd_points.json")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    c = args.channels
    kernel = (rng.normal(size=(3, 3, c, 64)) / np.sqrt(9 * c)).astype(np.float32)
    tiles = {m: np.maximum(rng.normal(size=(args.tiles, m + 2, m + 2, c)), 0).astype(np.float32) for m in (2, 4)}
    rows = []
    for extra in itertools.combinations(CANDIDATES, 2):
        points = [Fraction(0), Fraction(1), Fraction(-1), *extra]
        rows.append({"tile": 4, "points": [str(p) for p in points] + ["inf"],
                     **dict(zip(("max", "rms"), errors(*transforms(points, 4), tiles[4], kernel)))})
    rows.sort(key=lambda row: row["rms"])
    f2 = [Fraction(0), Fraction(1), Fraction(-1)]
    rows.append({"tile": 2, "points": ["0", "1", "-1", "inf"],
                 **dict(zip(("max", "rms"), errors(*transforms(f2, 2), tiles[2], kernel)))})
    t = tiles[4]
    windows = np.stack([t[:, i:i + 4, j:j + 4] for i in range(3) for j in range(3)], 3).reshape(-1, 9 * c)
    direct = (windows @ kernel.reshape(9 * c, -1)).reshape(len(t), 4, 4, -1)
    rows.append({"tile": None, "points": ["direct"], **dict(zip(("max", "rms"), compare(direct, exact(t, kernel, 4))))})
    print(f"{'tile':>4s}  {'points':36s} {'largest':>9s} {'rms':>9s}")
    for row in rows[:10] + [r for r in rows[10:] if r["points"][:5] == ["0", "1", "-1", "2", "-2"]] + rows[-2:]:
        print(f"{row['tile'] or '-':>4}  {' '.join(row['points']):36s} {row['max']:9.2e} {row['rms']:9.2e}")
    args.json.write_text(json.dumps({"channels": c, "tiles": args.tiles, "rows": rows}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
