"""Linear probe on frozen features: multinomial logistic regression (scikit-learn).

Reference: DINOv2 (arXiv 2304.07193) "Linear probing" and ``dinov2/eval/log_regression.py`` (L-BFGS logistic
regression on frozen CLS features, the CPU-friendly variant of its linear eval). Features are standardised with
the training statistics, as the reference does; the result is top-1 accuracy in [0, 1].
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, c: float = 1.0, max_iter: int = 200, seed: int = 0) -> float:
    """Top-1 accuracy of a logistic regression fitted on (n_train, D) features, scored on (n_test, D).

    Args:
        c: inverse L2 regularisation strength (scikit-learn's ``C``).
        max_iter: L-BFGS iterations; an unconverged fit is still scored (the warning is silenced).
    """
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError("linear probe needs non-empty train and test features")
    if (train_labels < 0).any() or (test_labels < 0).any():
        raise ValueError("linear probe needs an image-level label for every image (found label -1)")
    if len(torch.unique(train_labels)) < 2:
        raise ValueError("linear probe needs at least two classes in the training split")
    scaler = StandardScaler().fit(train_features.float().numpy())
    x_train = scaler.transform(train_features.float().numpy())
    x_test = scaler.transform(test_features.float().numpy())
    clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    # one BLAS/OpenMP thread: these fits are small, and with 2+ threads on a busy machine they spend most of their
    # time handing work between threads (measured 5-13x slower on a shared 2-core box)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        # few images per class (small evaluation subsets) trip scikit-learn's "looks like regression" hint
        warnings.filterwarnings("ignore", message="The number of unique classes", category=UserWarning)
        clf.fit(x_train, train_labels.numpy())
    return float(np.mean(clf.predict(x_test) == test_labels.numpy()))
