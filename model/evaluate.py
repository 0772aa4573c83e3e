"""Evaluation of a trained model on a dataset's splits."""

from __future__ import annotations

import os

import torch
from torch import nn

from model.data import local_batches


@torch.no_grad()
def test_l1(model: nn.Module, data_dir: str | os.PathLike, split: str = "test") -> float:
    """Mean L1 between Mask × Noisy and Clean magnitudes over every patch of a split
    (the original project's test loss)."""
    model.eval()
    total, count = 0.0, 0
    for noisy, clean in local_batches(data_dir, split):
        total += torch.sum(torch.abs(model(noisy) * noisy - clean)).item()
        count += clean.numel()
    return total / max(count, 1)


def identity_l1(data_dir: str | os.PathLike, split: str) -> float:
    """The same loss for the identity mask (mask = 1, output = noisy input)."""
    total, count = 0.0, 0
    for noisy, clean in local_batches(data_dir, split):
        total += torch.sum(torch.abs(noisy - clean)).item()
        count += clean.numel()
    return total / max(count, 1)
