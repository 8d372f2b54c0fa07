"""CPT losses against hand-computed values, and finiteness with nothing masked."""

from __future__ import annotations

import math

import torch

from moca_train.losses import cpt_objective, mim_loss, mlm_loss


def test_mlm_loss_hand_computed():
    # Row 0: uniform logits over 4 classes -> CE = log 4. Row 1: logits (0, ln 3, 0, 0), label 1 -> CE = -log(3/6).
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
    labels = torch.tensor([2, 1, -100])
    expected = (math.log(4.0) + math.log(2.0)) / 2  # the ignored row counts in neither sum nor denominator
    assert math.isclose(mlm_loss(logits, labels).item(), expected, rel_tol=1e-6)


def test_mlm_loss_accepts_batched_shapes():
    logits = torch.zeros(2, 3, 5)  # (B, T, V) uniform
    labels = torch.tensor([[1, -100, 2], [-100, -100, 4]])
    assert math.isclose(mlm_loss(logits, labels).item(), math.log(5.0), rel_tol=1e-6)


def test_mim_loss_hand_computed_masked_only():
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0], [float("nan"), 0.0]])
    target = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    mask = torch.tensor([True, True, False])
    # (1 + 4 + 9 + 16) / 4 values; the NaN row is unmasked and must not leak in
    assert math.isclose(mim_loss(pred, target, mask).item(), 7.5, rel_tol=1e-6)
    assert math.isclose(mim_loss(pred[:2], target[:2]).item(), 7.5, rel_tol=1e-6)


def test_empty_masks_give_finite_zero_with_gradient_path():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, generator=g).requires_grad_()
    pred = torch.randn(3, 5, generator=g).requires_grad_()
    mlm = mlm_loss(logits, torch.full((4,), -100))
    mim = mim_loss(pred, torch.zeros(3, 5), torch.zeros(3, dtype=torch.bool))
    empty = mim_loss(torch.zeros(0, 5), torch.zeros(0, 5), torch.zeros(0, dtype=torch.bool))
    for value in (mlm, mim, empty):
        assert torch.isfinite(value) and value.item() == 0.0
    (mlm + mim).backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits)) and torch.equal(pred.grad, torch.zeros_like(pred))


def test_cpt_objective_weights_mae():
    assert cpt_objective(torch.tensor(2.0), torch.tensor(3.0), mae_weight=0.5).item() == 3.5
    assert cpt_objective(torch.tensor(2.0), torch.tensor(3.0), mae_weight=0.0).item() == 2.0
