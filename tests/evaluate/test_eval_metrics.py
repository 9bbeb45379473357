"""Evaluation metrics against values computed by hand on toy inputs."""

import numpy as np
import pytest

from ankh_platform.evaluate import metrics as M
from ankh_platform.evaluate.tasks import contact_map


def test_accuracy_and_confusion():
    pred, true = np.array([0, 1, 2, 2, 1]), np.array([0, 1, 1, 2, 0])
    assert M.accuracy(pred, true) == pytest.approx(3 / 5)
    cm = M.confusion(pred, true, 3)  # rows = true
    assert cm.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="shapes differ"):
        M.accuracy(pred, true[:3])


def test_spearman_hand_values_and_ties():
    # Perfectly monotone but non-linear -> 1; reversed -> -1.
    assert M.spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)
    assert M.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties: ranks x = [1, 2.5, 2.5, 4], y = [1, 2, 3, 4]; pearson by hand:
    # xc = [-1.5, 0, 0, 1.5], yc = [-1.5, -.5, .5, 1.5]; cov = 4.5; |xc| = sqrt(4.5); |yc| = sqrt(5)
    assert M.rankdata([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert M.spearman([10, 20, 20, 30], [1, 2, 3, 4]) == pytest.approx(4.5 / np.sqrt(4.5 * 5))


def test_average_precision_hand_value():
    # Ranked: 1 (P=1, R=.5), 0, 1 (P=2/3, R=1), 0  ->  AP = .5*1 + .5*2/3
    ap = M.average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]))
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    # Ties count as one threshold: both at 0.5, one positive -> P = 1/2 at R = 1.
    assert M.average_precision(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(0.5)
    # Micro averaging = flatten a matrix.
    s, y = np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[1, 0], [0, 1]])
    assert M.average_precision(s, y) == pytest.approx(1.0)


def test_fmax_hand_value():
    scores = np.array([[0.9, 0.6, 0.1], [0.3, 0.8, 0.7]])
    labels = np.array([[1, 0, 0], [0, 1, 1]])
    # t in (0.3, 0.6]: p1 = 1/2, p2 = 2/2 -> P = .75; r1 = 1, r2 = 1 -> R = 1; F = 6/7
    # t in (0.7, 0.8]: p1 = 1, p2 = 1, R = (1 + .5)/2 = .75 -> F = 6/7 too; t in (0.6, 0.7]: F = 1
    f, t = M.fmax(scores, labels)
    assert f == pytest.approx(1.0)
    assert 0.6 < t <= 0.7
    f2, _ = M.fmax(scores, labels, thresholds=np.array([0.5]))
    assert f2 == pytest.approx(6 / 7)


def test_contact_precision_and_map():
    L = 20
    true = np.zeros((L, L), bool)
    true[0, 15] = true[15, 0] = True  # separation 15: medium range
    true[2, 19] = true[19, 2] = True  # separation 17
    prob = np.zeros((L, L))
    prob[0, 15], prob[1, 18], prob[2, 19] = 0.9, 0.8, 0.7  # top-1 right, top-2 half, top-3 2/3
    assert M.contact_precision(prob, true, min_sep=12, top=1) == pytest.approx(1.0)
    assert M.contact_precision(prob, true, min_sep=12, top=2) == pytest.approx(0.5)
    assert M.contact_precision(prob, true, min_sep=12, top=3) == pytest.approx(2 / 3)
    assert M.contact_precision(prob, true, min_sep=16, top=1) == pytest.approx(0.0)  # 1-18 first
    # C-alpha map: points on a line 1 A apart -> contact iff |i-j| < 8 and |i-j| >= 6.
    ca = np.stack([np.arange(12, dtype=np.float32), np.zeros(12), np.zeros(12)], axis=1)
    cm = contact_map(ca)
    idx = np.arange(12)
    sep = np.abs(idx[:, None] - idx[None, :])
    assert np.array_equal(cm, (sep >= 6) & (sep < 8))
