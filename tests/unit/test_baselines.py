"""Baselines separate points off the normal subspace / cloud, deterministically."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.baselines import IsolationForestBaseline, PcaT2Q


def correlated_normal(n: int, seed: int) -> np.ndarray:
    """Rows on a 2-D plane in 6-D plus small noise: PCA keeps 2 components."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 2))
    mixing = np.array([[1.0, 0.5, 0.0, 2.0, -1.0, 0.3], [0.0, 1.0, 1.0, -0.5, 0.5, 1.0]])
    return latent @ mixing + 0.01 * rng.normal(size=(n, 6))


def test_pca_q_flags_rows_off_the_training_subspace() -> None:
    model = PcaT2Q(explained_variance=0.99).fit(correlated_normal(500, 0))
    normal = correlated_normal(200, 1)
    off_plane = normal.copy()
    off_plane[:, 2] += 1.0  # breaks the correlation between columns: Q grows, T2 barely
    t2_normal, q_normal = model.statistics(normal)
    _, q_off = model.statistics(off_plane)
    assert np.median(q_off) > 100 * np.median(q_normal)
    assert model.score(off_plane).min() > np.quantile(model.score(normal), 0.99)
    assert t2_normal.shape == (200,)


def test_pca_t2_flags_extreme_rows_inside_the_subspace() -> None:
    train = correlated_normal(500, 0)
    model = PcaT2Q(explained_variance=0.99).fit(train)
    far_along = 6.0 * correlated_normal(50, 2)  # same plane, far out
    t2_far, _ = model.statistics(far_along)
    t2_train, _ = model.statistics(train)
    assert np.median(t2_far) > 3 * np.quantile(t2_train, 0.99)


def test_each_statistic_is_scaled_by_its_training_reference_quantile() -> None:
    train = correlated_normal(1000, 3)
    scores = PcaT2Q(reference_quantile=0.99).fit(train).score(train)
    # a score above 2 needs T2 or Q above its own training 99 % quantile: at most 2 % of training rows
    assert np.mean(scores > 2.0) <= 0.02
    assert np.mean(scores > 1.0) >= 0.01  # at least the 1 % of rows above either reference


def test_isolation_forest_scores_outliers_higher_and_is_deterministic() -> None:
    train = correlated_normal(500, 0)
    test = np.vstack([correlated_normal(50, 1), np.full((5, 6), 8.0)])
    first = IsolationForestBaseline(n_estimators=50, seed=7).fit(train).score(test)
    second = IsolationForestBaseline(n_estimators=50, seed=7).fit(train).score(test)
    np.testing.assert_array_equal(first, second)
    assert first[-5:].min() > first[:50].max()


def test_constant_column_does_not_break_pca() -> None:
    train = correlated_normal(200, 0)
    train[:, 4] = 3.0
    scores = PcaT2Q().fit(train).score(train)
    assert np.all(np.isfinite(scores))


def test_bad_shapes_and_values_are_named() -> None:
    model = PcaT2Q().fit(correlated_normal(100, 0))
    with pytest.raises(ValueError, match="expected 6 columns as in training, got 5"):
        model.score(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="expected a 2-D array"):
        model.score(np.zeros((3, 6, 2)))
    bad = correlated_normal(10, 1)
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite value nan at row 4, column 2"):
        IsolationForestBaseline().fit(bad)
    with pytest.raises(RuntimeError, match="call fit"):
        IsolationForestBaseline().score(bad)
