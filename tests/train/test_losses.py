"""fer.train.losses: each loss against its definition, on small hand inputs."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fer.cache.errors import FerError
from fer.train.losses import class_weights, make_loss


def _inputs():
    torch.manual_seed(0)
    logits = torch.randn(4, 7)
    dist = torch.softmax(torch.randn(4, 7), 1)
    labels = dist.argmax(1)
    return logits, dist, labels


def test_kl_is_batchmean_kl_divergence():
    logits, dist, labels = _inputs()
    got = make_loss("kl", num_classes=7)(logits, dist, labels)
    logp = torch.log_softmax(logits, 1)
    want = (dist * (dist.log() - logp)).sum(1).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert make_loss("kl", num_classes=7)(torch.log(dist), dist, labels).item() == pytest.approx(0.0, abs=1e-6)


def test_mse_on_probabilities():
    logits, dist, labels = _inputs()
    want = ((torch.softmax(logits, 1) - dist) ** 2).mean()
    assert make_loss("mse", num_classes=7)(logits, dist, labels).item() == pytest.approx(want.item(), rel=1e-6)


def test_ce_and_weighted_ce():
    logits, dist, labels = _inputs()
    assert (make_loss("ce", num_classes=7)(logits, dist, labels).item()
            == pytest.approx(F.cross_entropy(logits, labels).item()))
    train_labels = np.array([0, 0, 0, 1])  # class 0 three times as frequent as class 1
    w = class_weights(train_labels, 7)
    assert w[0].item() == pytest.approx(4 / (2 * 3)) and w[1].item() == pytest.approx(4 / (2 * 1))
    assert w[2:].tolist() == [1.0] * 5
    got = make_loss("wce", train_labels=train_labels, num_classes=7)(logits, dist, labels)
    assert got.item() == pytest.approx(F.cross_entropy(logits, labels, weight=w).item())


def test_unknown_loss():
    with pytest.raises(FerError, match="unknown --loss"):
        make_loss("hinge", num_classes=7)
