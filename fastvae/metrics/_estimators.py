"""The small estimators the metrics need, in torch float64 (no scikit-learn).

- :func:`discretize`: equal-width histogram bins per column (disentanglement_lib's
  ``_histogram_discretize``: ``np.histogram`` edges over the sample's range, the maximum in the last bin).
- :func:`mutual_information` / :func:`entropy`: plug-in estimates in nats from contingency tables
  (what ``sklearn.metrics.mutual_info_score`` computes).
- :func:`standardize`: z-scores with the training rows' mean and standard deviation.
- :func:`lasso`: ``min_w 1/(2N) ||y - X w||^2 + alpha ||w||_1`` by cyclic coordinate descent (the
  objective and scaling of ``sklearn.linear_model.Lasso``, no intercept: inputs are centred).
- :func:`logistic_regression`: multinomial logistic regression with an L2 penalty, full-batch L-BFGS.
- :func:`nearest_mean_accuracy`: a one-feature nearest-class-mean classifier and its chance-adjusted
  balanced accuracy.
"""

from __future__ import annotations

import torch

__all__ = [
    "discretize",
    "entropy",
    "lasso",
    "logistic_regression",
    "mutual_information",
    "nearest_mean_accuracy",
    "relabel",
    "standardize",
]


def discretize(values: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Equal-width bins over each column's range: float ``(N, L)`` -> int64 ``(N, L)`` in ``[0, num_bins)``.

    Bin ``b`` of a column holds ``min + b w <= x < min + (b + 1) w`` with ``w = (max - min) / num_bins``;
    the maximum goes to the last bin; a constant column is all bin 0.
    """
    low = values.min(dim=0).values
    width = values.max(dim=0).values - low
    scaled = (values - low) / torch.where(width > 0, width, torch.ones_like(width))
    return (scaled * num_bins).floor().clamp(0, num_bins - 1).long()


def relabel(labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Integer labels ``(N,)`` as ``0 .. C - 1`` in sorted order of their values, and ``C``."""
    values, inverse = torch.unique(labels, return_inverse=True)
    return inverse, values.numel()


def mutual_information(a: torch.Tensor, b: torch.Tensor) -> float:
    """Plug-in mutual information (nats) of two integer label vectors ``(N,)`` of any values."""
    a, size_a = relabel(a)
    b, size_b = relabel(b)
    joint = torch.bincount(a * size_b + b, minlength=size_a * size_b).reshape(size_a, size_b).double()
    joint /= joint.sum()
    outer = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    nonzero = joint > 0
    return float((joint[nonzero] * (joint[nonzero] / outer[nonzero]).log()).sum().clamp_min(0.0))


def entropy(labels: torch.Tensor) -> float:
    """Plug-in entropy (nats) of an integer label vector ``(N,)``."""
    counts = torch.unique(labels, return_counts=True)[1].double()
    p = counts / counts.sum()
    return float(-(p * p.log()).sum())


def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Columns of ``train`` ``(N, D)`` and of each of ``others`` ``(M, D)`` z-scored with ``train``'s statistics.

    The standard deviation is the population one (``ddof=0``); a constant column of ``train`` becomes
    all zeros in every output (its scale is unknown, and it carries no information).
    """
    mean = train.mean(0)
    std = train.std(0, correction=0)
    constant = std == 0
    scale = torch.where(constant, torch.ones_like(std), std)
    return [((x - mean) / scale).masked_fill(constant, 0.0) for x in (train, *others)]


def lasso(
    x: torch.Tensor, y: torch.Tensor, alpha: float, *, tol: float = 1e-10, max_sweeps: int = 10_000
) -> torch.Tensor:
    """Lasso weights ``(D, T)`` for inputs ``x (N, D)`` and targets ``y (N, T)`` (float64, centred).

    Minimises ``1/(2N) ||y_t - x w_t||^2 + alpha ||w_t||_1`` for every target column ``t`` (no
    intercept), by cyclic coordinate descent on the Gram matrix, all targets at once; it stops when a
    sweep changes no weight by more than ``tol`` (or after ``max_sweeps`` sweeps). Columns of ``x``
    that are all zero get weight 0.
    """
    n, d = x.shape
    gram = x.T @ x / n
    residual_corr = x.T @ y / n  # (D, T): x^T (y - x w) / N, kept up to date
    weights = torch.zeros(d, y.shape[1], dtype=x.dtype)
    diag = gram.diagonal().tolist()
    active = [j for j in range(d) if diag[j] > 0]
    for _ in range(max_sweeps):
        largest = 0.0
        for j in active:
            rho = residual_corr[j] + diag[j] * weights[j]
            new = torch.sign(rho) * (rho.abs() - alpha).clamp_min(0.0) / diag[j]
            delta = new - weights[j]
            step = float(delta.abs().max())
            if step > 0:
                residual_corr -= gram[:, j : j + 1] * delta
                weights[j] = new
                largest = max(largest, step)
        if largest <= tol:
            break
    return weights


def logistic_regression(
    x: torch.Tensor, labels: torch.Tensor, num_classes: int, *, l2: float, max_iter: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on ``x (N, D)`` float64 and ``labels (N,)`` int64 in ``[0, num_classes)``.

    Minimises ``mean_n CE(x_n W + b, labels_n) + l2 / 2 ||W||^2`` (the bias is not penalised) with
    full-batch L-BFGS (strong Wolfe line search) from zero. Returns ``(W (D, C), b (C,))``.
    """
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, labels) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def nearest_mean_accuracy(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor
) -> float:
    """Chance-adjusted balanced accuracy of a one-feature nearest-class-mean classifier.

    Fits the class means of ``train_x (N,)`` per label of ``train_y (N,)`` (int64), predicts each
    ``test_x (M,)`` as the class with the nearest mean (ties to the smaller label), and scores the
    predictions against ``test_y (M,)``: the balanced accuracy ``bacc`` (mean per-class recall over
    the classes present in ``test_y``) adjusted for chance, ``(bacc - 1/C) / (1 - 1/C)`` with ``C``
    those classes, clipped at 0. In one dimension nearest-mean is a linear classifier (LDA with equal
    priors and a shared variance): the thresholds are the midpoints between sorted class means.
    A single test class scores 0.
    """
    classes = torch.unique(train_y)
    onehot = (train_y[:, None] == classes[None, :]).double()
    means = (onehot * train_x[:, None]).sum(0) / onehot.sum(0)
    predicted = classes[(test_x[:, None] - means[None, :]).abs().argmin(1)]
    test_labels, num_test_classes = relabel(test_y)
    if num_test_classes < 2:
        return 0.0
    correct = (predicted == test_y).double()
    recalls = torch.bincount(test_labels, weights=correct) / torch.bincount(test_labels).double()
    chance = 1.0 / num_test_classes
    return max(0.0, (float(recalls.mean()) - chance) / (1.0 - chance))
