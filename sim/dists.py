"""Random streams for the sim: one numpy generator per named stream, drawn in blocks.

Drawing one number at a time from numpy costs about a microsecond; drawing 4,096 at
once and handing them out from a list iterator costs tens of nanoseconds each, which
matters at tens of thousands of simulated payments per second. Each stream is seeded
from (seed, name), so adding a stream never shifts the numbers another stream draws,
and the same seed always replays the same run.
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable, Iterator

import numpy as np

from sim.calibration import Dist

BLOCK = 4096
Draw = Callable[[], float]


def stream(seed: int, name: str) -> np.random.Generator:
    """An independent generator for one named purpose."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=16).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest, "little")))


class _Blocked:
    """Hands out numbers from blocks made by `fill(rng, n)`."""

    __slots__ = ("rng", "fill", "_it")

    def __init__(self, rng: np.random.Generator, fill: Callable[[np.random.Generator, int], np.ndarray]) -> None:
        self.rng = rng
        self.fill = fill
        self._it: Iterator[float] = iter(())

    def __call__(self) -> float:
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.fill(self.rng, BLOCK).tolist())
            return next(self._it)


def _const(value: float) -> Draw:
    return lambda: value


def sampler(dist: Dist, rng: np.random.Generator, scale: float = 1.0) -> Draw:
    """A zero-argument function drawing from `dist` (times `scale`, e.g. 0.001 for ms)."""
    if dist.quantiles is not None:
        grid = np.linspace(0.0, 1.0, len(dist.quantiles))
        values = np.asarray(dist.quantiles, dtype=float) * scale
        if values[0] == values[-1]:
            return _const(float(values[0]))
        return _Blocked(rng, lambda r, n: np.interp(r.random(n), grid, values))
    median = dist.median * scale
    sigma = dist.sigma
    if sigma == 0.0 or median == 0.0:
        return _const(median)
    return _Blocked(rng, lambda r, n: median * np.exp(sigma * r.standard_normal(n)))


def _inverse(dist: Dist, z: np.ndarray, u: np.ndarray) -> np.ndarray:
    """`dist`'s values at the standard normal quantiles z (u = Phi(z)): its inverse CDF, either form."""
    if dist.quantiles is not None:
        return np.interp(u, np.linspace(0.0, 1.0, len(dist.quantiles)), np.asarray(dist.quantiles, dtype=float))
    return dist.median * np.exp(dist.sigma * z)


def comonotone(first: Dist, second: Dist, rng: np.random.Generator) -> Callable[[], tuple[float, float]]:
    """Pairs (x, y) drawn from one uniform: each follows its own distribution, and a high x comes with a
    high y. For two delays of one cause (a busy process slows both), whose measured spread is that of
    their sum, which independent draws would widen."""
    def fill(r: np.random.Generator, n: int) -> list[tuple[float, float]]:
        z = r.standard_normal(n)
        u = 0.5 * (1.0 + np.array([math.erf(v) for v in (z / math.sqrt(2.0)).tolist()]))
        return list(zip(_inverse(first, z, u).tolist(), _inverse(second, z, u).tolist()))

    it: Iterator[tuple[float, float]] = iter(())

    def draw() -> tuple[float, float]:
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(fill(rng, BLOCK))
            return next(it)

    return draw


def exponential(rng: np.random.Generator, mean: float) -> Draw:
    """Exponential gaps of the given mean (inter-arrival times of a Poisson stream)."""
    if mean <= 0 or math.isinf(mean):
        raise ValueError(f"exponential mean must be positive and finite, not {mean}")
    return _Blocked(rng, lambda r, n: r.exponential(mean, n))


def uniform(rng: np.random.Generator) -> Draw:
    """Uniform on [0, 1)."""
    return _Blocked(rng, lambda r, n: r.random(n))


def integers(rng: np.random.Generator, high: int) -> Callable[[], int]:
    """Uniform integers in [0, high)."""
    return _Blocked(rng, lambda r, n: r.integers(0, high, n))  # type: ignore[return-value]


def choice(rng: np.random.Generator, weights: list[float]) -> Callable[[], int]:
    """Indices drawn with the given weights (route mix)."""
    p = np.asarray(weights, dtype=float)
    p = p / p.sum()
    if np.count_nonzero(p) == 1:
        only = int(np.flatnonzero(p)[0])
        return lambda: only
    cumulative = np.cumsum(p)
    cumulative[-1] = 1.0
    draw = _Blocked(rng, lambda r, n: np.searchsorted(cumulative, r.random(n), side="right"))
    return draw  # type: ignore[return-value]
