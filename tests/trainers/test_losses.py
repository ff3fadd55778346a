"""Losses on tiny hand-computed cases."""
import math

import torch

from trainers.losses import masked_ce, per_position_ce, uniformity


def test_masked_ce_ignores_minus_one_and_matches_hand_computation():
    logits = torch.tensor([[[0.0, 0.0]], [[math.log(3.0), 0.0]], [[5.0, -5.0]]])  # (3, 1, 2)
    y = torch.tensor([[1], [0], [-1]])
    # row 0: -log(1/2); row 1: -log(3/4); row 2 ignored
    expect = (math.log(2) + math.log(4 / 3)) / 2
    assert abs(masked_ce(logits, y).item() - expect) < 1e-6
    pp = per_position_ce(logits.view(1, 3, 2), y.view(1, 3))
    assert abs(pp[0, 0].item() - math.log(2)) < 1e-6 and pp[0, 2].item() == 0.0


def test_masked_ce_with_no_targets_is_zero_and_differentiable():
    logits = torch.randn(2, 3, 4, requires_grad=True)
    loss = masked_ce(logits, torch.full((2, 3), -1))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_uniformity_hand_computed():
    # two orthogonal unit tokens: ||a-b||^2 = 2 -> log(exp(-2*2)) = -4
    z = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])
    assert abs(uniformity(z).item() - (-4.0)) < 1e-5
    # identical tokens: distance 0 -> log(1) = 0 (the collapsed, worst case)
    z = torch.tensor([[[2.0, 2.0], [1.0, 1.0]]])
    assert abs(uniformity(z).item()) < 1e-6
    # three tokens at 120 degrees: ||a-b||^2 = 3 for each pair -> -6
    ang = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    z = torch.stack([ang.cos(), ang.sin()], -1)[None]
    assert abs(uniformity(z).item() - (-6.0)) < 1e-4
