"""Training losses: soft Dice + cross-entropy for softmax outputs, soft Dice + BCE for one sigmoid
channel (and for the depth net's bone probability volume).

Dice is nnU-Net's "batch Dice": intersections and sizes are summed over the whole batch and all
pixels before the ratio, over foreground channels only, with a small smoothing term; the loss is
1 - mean Dice, so a perfect prediction gives a Dice term of 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SMOOTH = 1e-5


def soft_dice_loss(probabilities: Tensor, target: Tensor, smooth: float = SMOOTH) -> Tensor:
    """1 - mean over channels of the batch soft Dice.

    probabilities, target: (B, K, ...) float, target one-hot (or 0/1); sums run over the batch
    and every spatial axis, one Dice per channel K.
    """
    dims = (0,) + tuple(range(2, probabilities.dim()))
    intersection = (probabilities * target).sum(dims)
    sizes = probabilities.sum(dims) + target.sum(dims)
    return 1.0 - ((2.0 * intersection + smooth) / (sizes + smooth)).mean()


def dice_bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Soft Dice + binary cross-entropy. logits, target: (B, 1, ...) float; target 0/1."""
    target = target.to(logits.dtype)
    return soft_dice_loss(torch.sigmoid(logits), target) + F.binary_cross_entropy_with_logits(logits, target)


def dice_ce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Soft Dice over the foreground channels + cross-entropy. logits (B, K, H, W), target (B, H, W)
    long class indices 0..K-1."""
    n_classes = logits.shape[1]
    one_hot = F.one_hot(target, n_classes).movedim(-1, 1).to(logits.dtype)
    probabilities = torch.softmax(logits, dim=1)
    return soft_dice_loss(probabilities[:, 1:], one_hot[:, 1:]) + F.cross_entropy(logits, target)


def segmentation_loss(logits: Tensor, target: Tensor, output_mode: str) -> Tensor:
    """The model's loss: logits (B, K, H, W) float32, target (B, H, W) long output labels.

    'softmax': Dice + CE over K classes; 'sigmoid': one bone channel, Dice + BCE against target > 0.
    """
    if output_mode == "sigmoid":
        return dice_bce_loss(logits, (target > 0)[:, None])
    return dice_ce_loss(logits, target)


def object_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """The prompted object's loss: logits and target (K, 1, H, W), target 0/1. Soft Dice per object
    (each prompt asks for one structure, whatever its size), averaged, + binary cross-entropy."""
    target = target.to(logits.dtype)
    probabilities = torch.sigmoid(logits)
    dims = tuple(range(1, logits.dim()))
    dice = (2 * (probabilities * target).sum(dims) + smooth) / (probabilities.sum(dims) + target.sum(dims) + smooth)
    return (1 - dice).mean() + F.binary_cross_entropy_with_logits(logits, target)
