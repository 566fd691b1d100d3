"""Classic baselines scored on the same split as the VAE: PCA T-squared + Q, and Isolation Forest.

Common interface: `fit(X_train)` then `score(X) -> [N]` (higher = more anomalous) on 2-D `X` `[N, D]`
(callers flatten windows). Both are deterministic for a given seed.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest

log = logging.getLogger(__name__)

STD_FLOOR = 1e-6  # a constant column would divide by zero; it standardises to 0 instead
EIG_FLOOR = 1e-9  # components with (numerically) zero variance would blow up T-squared


class Baseline(Protocol):
    """What the benchmarks need from a baseline detector."""

    name: str

    def fit(self, X: np.ndarray) -> Baseline:
        """Fit on normal training rows `[N, D]`."""
        ...

    def score(self, X: np.ndarray) -> np.ndarray:
        """Anomaly score per row `[N]`, higher = more anomalous."""
        ...


def _as_matrix(X: np.ndarray, what: str, width: int | None = None) -> np.ndarray:
    array = np.asarray(X, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(
            f"{what}: expected a 2-D array [N, D] (flatten windows first), got shape {array.shape}"
        )
    if width is not None and array.shape[1] != width:
        raise ValueError(f"{what}: expected {width} columns as in training, got {array.shape[1]}")
    bad = np.argwhere(~np.isfinite(array))
    if bad.size:
        row, col = bad[0]
        raise ValueError(f"{what}: non-finite value {array[row, col]} at row {row}, column {col}")
    return array


class PcaT2Q:
    """PCA on standardised columns; Hotelling T-squared in the principal subspace and Q (SPE) in the residual.

    The combined score is ``T2 / T2_ref + Q / Q_ref`` where the references are the `reference_quantile`
    quantiles of each statistic on the training rows, so both statistics weigh the same at the training
    reference level. The number of components keeps `explained_variance` of the training variance (at most
    ``min(N - 1, D)``).
    """

    name = "pca_t2q"

    def __init__(
        self, explained_variance: float = 0.9, reference_quantile: float = 0.99, seed: int = 0
    ) -> None:
        if not 0 < explained_variance <= 1:
            raise ValueError(f"explained_variance must be in (0, 1], got {explained_variance}")
        if not 0 < reference_quantile < 1:
            raise ValueError(f"reference_quantile must be in (0, 1), got {reference_quantile}")
        self.explained_variance = explained_variance
        self.reference_quantile = reference_quantile
        self.seed = seed
        self._mean: np.ndarray | None = None
        self._std: np.ndarray | None = None
        self._pca: PCA | None = None
        self._t2_ref = 1.0
        self._q_ref = 1.0

    def fit(self, X: np.ndarray) -> PcaT2Q:
        """Fit scaler, PCA and the two reference levels on normal rows."""
        train = _as_matrix(X, "PcaT2Q.fit")
        if train.shape[0] < 3:
            raise ValueError(f"PcaT2Q.fit: need at least 3 training rows, got {train.shape[0]}")
        self._mean = train.mean(axis=0)
        self._std = np.maximum(train.std(axis=0), STD_FLOOR)
        z = (train - self._mean) / self._std
        full = PCA(svd_solver="full", random_state=self.seed).fit(z)
        cumulative = np.cumsum(full.explained_variance_ratio_)
        n_components = int(np.searchsorted(cumulative, self.explained_variance - 1e-12) + 1)
        n_components = max(1, min(n_components, len(cumulative)))
        self._pca = PCA(n_components=n_components, svd_solver="full", random_state=self.seed).fit(z)
        self._t2_ref, self._q_ref = 1.0, 1.0
        t2, q = self.statistics(train)
        self._t2_ref = max(float(np.quantile(t2, self.reference_quantile)), EIG_FLOOR)
        self._q_ref = max(float(np.quantile(q, self.reference_quantile)), EIG_FLOOR)
        log.debug(
            "PcaT2Q: %d of %d components keep %.3f of the variance",
            n_components,
            z.shape[1],
            cumulative[n_components - 1],
        )
        return self

    def statistics(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hotelling T-squared and Q (squared prediction error) per row."""
        if self._pca is None or self._mean is None or self._std is None:
            raise RuntimeError("PcaT2Q: call fit() before score()")
        z = (_as_matrix(X, "PcaT2Q.score", len(self._mean)) - self._mean) / self._std
        projected = self._pca.transform(z)
        eigenvalues = np.maximum(self._pca.explained_variance_, EIG_FLOOR)
        t2 = np.sum(projected**2 / eigenvalues, axis=1)
        residual = z - self._pca.inverse_transform(projected)
        q = np.sum(residual**2, axis=1)
        return t2, q

    def score(self, X: np.ndarray) -> np.ndarray:
        """Combined ``T2 / T2_ref + Q / Q_ref`` per row."""
        t2, q = self.statistics(X)
        return t2 / self._t2_ref + q / self._q_ref


class IsolationForestBaseline:
    """scikit-learn's Isolation Forest; the score is the negated `score_samples` (higher = more anomalous)."""

    name = "isolation_forest"

    def __init__(self, n_estimators: int = 200, seed: int = 0) -> None:
        self.n_estimators = n_estimators
        self.seed = seed
        self._model: IsolationForest | None = None
        self._width = 0

    def fit(self, X: np.ndarray) -> IsolationForestBaseline:
        """Fit the forest on normal rows."""
        train = _as_matrix(X, "IsolationForestBaseline.fit")
        self._width = train.shape[1]
        self._model = IsolationForest(n_estimators=self.n_estimators, random_state=self.seed).fit(train)
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        """Anomaly score per row."""
        if self._model is None:
            raise RuntimeError("IsolationForestBaseline: call fit() before score()")
        return -self._model.score_samples(_as_matrix(X, "IsolationForestBaseline.score", self._width))
