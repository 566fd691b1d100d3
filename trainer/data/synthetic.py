"""A small synthetic dataset for tests and smoke runs: correlated periodic channels with noise.

Half the series are normal throughout; the other half carry a fault in their last third (a level shift on
one channel plus extra noise), labelled 1 from where it starts. Deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np

from trainer.data.series import Series


def make_series(
    n_series: int = 12,
    length: int = 300,
    n_channels: int = 4,
    seed: int = 0,
    *,
    anomalous: bool = False,
    name_prefix: str = "synthetic",
) -> list[Series]:
    """`n_series` series `[length, n_channels]`; with `anomalous`, each gets a labelled fault at the end."""
    rng = np.random.default_rng(seed)
    series: list[Series] = []
    t = np.arange(length, dtype=np.float64)
    for i in range(n_series):
        phase = rng.uniform(0, 2 * np.pi)
        base = np.sin(2 * np.pi * t / 25.0 + phase)
        values = np.stack([(1 + 0.3 * c) * np.roll(base, 3 * c) + 0.5 * c for c in range(n_channels)], axis=1)
        values += rng.normal(0, 0.1, values.shape)
        labels = np.zeros(length, dtype=np.int64)
        if anomalous:
            start = 2 * length // 3
            channel = i % n_channels
            values[start:, channel] += 1.5
            values[start:] += rng.normal(0, 0.3, values[start:].shape)
            labels[start:] = 1
        series.append(
            Series(
                f"{name_prefix}/{'faulty' if anomalous else 'normal'}/{i}",
                values,
                [f"ch_{c}" for c in range(n_channels)],
                timestamps=t.copy(),
                labels=labels,
            )
        )
    return series
