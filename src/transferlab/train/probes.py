"""Simple models on frozen body features: what they score, and a head they fit.

- :func:`probe_cv`: cross-validated accuracy of an L2-regularised logistic regression on
  standardised features, its strength the best of :data:`C_GRID` on the same folds;
- :func:`knn_cv`: the same folds, a cosine k-nearest-neighbour vote;
- :func:`logme`: the LogME evidence of the features for the one-hot labels;
- :func:`fit_logistic_head`: a model's linear head set to that logistic regression, its
  strength chosen by cross-validation on the training features alone (``head_fit="logreg"``).

scikit-learn does the fitting (lbfgs, stratified folds); the functions take numpy arrays or tensors.
Each runs with one BLAS thread (:func:`_one_blas_thread`): these fits are small, and after a forward pass
torch's threads still spin on the cores, so BLAS threads beside them made a ranking's probes 8x slower.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from ..config import FOLDS
from ..errors import TransferlabError

__all__ = ["C_GRID", "KNN_K", "probe_cv", "knn_cv", "logme", "logistic", "fit_logistic_head"]

F = TypeVar("F", bound=Callable[..., Any])


def _one_blas_thread(fn: F) -> F:
    """Run ``fn`` with BLAS limited to one thread (scikit-learn's threadpoolctl), as the module docstring says."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="blas"):
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


C_GRID = (0.01, 0.1, 1.0)  # inverse L2 strengths of the logistic regression, tried on the same folds
CV_TOL = 1e-3  # the fits that score a strength stop here (scikit-learn's 1e-4 took 3x as long on 101 classes,
# for scores within 0.5 points, inside the fold-to-fold noise); the head fitted at the chosen strength uses 1e-4
KNN_K = 5


def _folds(labels: np.ndarray, seed: int) -> Any:
    from sklearn.model_selection import StratifiedKFold

    smallest = int(np.bincount(labels).min())
    if smallest < 2:
        raise TransferlabError("cross-validation on the training split needs at least 2 images of every class; "
                               "add images")
    return StratifiedKFold(n_splits=min(FOLDS, smallest), shuffle=True, random_state=seed)


@_one_blas_thread
def probe_cv(features: np.ndarray, labels: np.ndarray, seed: int = 0, grid: Sequence[float] = C_GRID,
             balanced: bool = False) -> tuple[float, float, float]:
    """Cross-validated accuracy of a logistic regression: (mean, standard error, best C).

    In each fold the strengths are fitted from the strongest regularisation to the weakest, each fit
    starting from the last one's solution (the same optimum, reached in fewer iterations: many classes
    made a ranking's probes its largest cost), to :data:`CV_TOL`.
    """
    folds = _folds(labels, seed)
    order = sorted(range(len(grid)), key=lambda j: grid[j])
    scores = np.zeros((len(grid), folds.get_n_splits()))
    for k, (train, held) in enumerate(folds.split(features, labels)):
        model = logistic(grid[order[0]], balanced, warm_start=True, tol=CV_TOL)
        for j in order:
            model.set_params(logisticregression__C=grid[j]).fit(features[train], labels[train])
            scores[j, k] = model.score(features[held], labels[held])
    best: tuple[float, float, float] | None = None
    for j, c in enumerate(grid):
        mean, se = float(scores[j].mean()), float(scores[j].std(ddof=1) / math.sqrt(scores.shape[1]))
        if best is None or mean > best[0]:
            best = (mean, se, c)
    return best


@_one_blas_thread
def knn_cv(features: np.ndarray, labels: np.ndarray, seed: int = 0, k: int = KNN_K) -> float:
    """Cross-validated accuracy of a k-nearest-neighbour vote on cosine distance (same folds as the probe)."""
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    folds = _folds(labels, seed)
    smallest = int(np.bincount(labels).min())  # no more neighbours than a training fold holds of its smallest class
    k = max(1, min(k, smallest - math.ceil(smallest / folds.get_n_splits())))
    return float(cross_val_score(KNeighborsClassifier(n_neighbors=k, metric="cosine"), features, labels,
                                 cv=folds).mean())


@_one_blas_thread
def logme(features: np.ndarray, labels: np.ndarray, iterations: int = 11) -> float:
    """LogME: the log marginal evidence per image of a Bayesian linear model from features to one-hot labels.

    For each class, the evidence of ``y = F w + noise`` with prior ``w ~ N(0, 1/alpha)`` and
    noise ``N(0, 1/beta)``, alpha and beta set by fixed-point iteration (MacKay); averaged over
    classes. Higher means the labels are more linearly predictable from the features.
    """
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s ** 2
    total = 0.0
    classes = np.unique(labels)
    for k in classes:
        y = (labels == k).astype(np.float64)
        z2 = (u.T @ y) ** 2
        outside = float(y @ y - z2.sum())  # the part of y no feature direction reaches
        alpha, beta = 1.0, 1.0
        for _ in range(iterations):
            t = alpha / beta
            gamma = float((sigma / (sigma + t)).sum())
            m2 = float((sigma * z2 / (sigma + t) ** 2).sum())
            res2 = float((z2 / (1 + sigma / t) ** 2).sum()) + outside
            alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t < 1e-2:
                break
        t = alpha / beta
        m2 = float((sigma * z2 / (sigma + t) ** 2).sum())
        res2 = float((z2 / (1 + sigma / t) ** 2).sum()) + outside
        log_det = float(np.log(alpha + beta * sigma).sum()) + (d - len(sigma)) * math.log(alpha)
        evidence = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - log_det / 2 - beta / 2 * res2
                    - alpha / 2 * m2 - n / 2 * math.log(2 * math.pi))
        total += evidence / n
    return total / len(classes)


def logistic(c: float, balanced: bool = False, warm_start: bool = False, tol: float = 1e-4) -> Any:
    """A standardising logistic regression with inverse L2 strength ``c`` (the one every probe fits)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000, warm_start=warm_start, tol=tol,
                                                              class_weight="balanced" if balanced else None))


@torch.no_grad()
@_one_blas_thread
def fit_logistic_head(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor, seed: int,
                      balanced: bool = False, select: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
    """Set ``head`` to a logistic regression on ``features``; return its inverse L2 strength C.

    C is the best of :data:`C_GRID` by stratified k-fold accuracy on ``select`` (features and
    labels; default the training features themselves), then the model is fitted on all of
    ``features``. The standardisation is folded into the head's weight and bias, so the head
    takes raw features. ``balanced`` weights classes by inverse frequency.
    """
    x_sel, y_sel = select if select is not None else (features, labels)
    c = probe_cv(x_sel.float().numpy(), y_sel.numpy(), seed, balanced=balanced)[2]
    clf = logistic(c, balanced).fit(features.float().numpy(), labels.numpy())
    scaler, regression = clf[0], clf[-1]
    coef = regression.coef_ / scaler.scale_  # on raw features: w . (x - mean) / scale + b
    intercept = regression.intercept_ - coef @ scaler.mean_
    if coef.shape[0] == 1:  # two classes: sklearn keeps one row, the log-odds of class 1
        coef, intercept = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    if coef.shape[0] != head.out_features:
        raise TransferlabError(f"the training split has {coef.shape[0]} of the {head.out_features} classes; "
                               "every class needs training images")
    head.weight.copy_(torch.as_tensor(coef).to(head.weight))
    if head.bias is not None:
        head.bias.copy_(torch.as_tensor(intercept).to(head.bias))
    return c
