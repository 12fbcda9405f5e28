"""The output layer and the cross-entropy in one step: the mean loss for training, per-token nll for scoring.

``F.cross_entropy(linear(h).float(), y)`` under bf16 autocast makes several passes over the
N x vocab logits in memory: the product with the bias, a copy to fp32, log-softmax, and in the
backward pass a zero-filled gradient, the log-softmax gradient (a second exponential) and a copy
back to bf16. Here the forward pass works through the logits a block of rows at a time while the
block is in cache: the bias is added in fp32, one softmax gives both the loss of each row
(-log of the target's probability) and the gradient of the summed loss with respect to its logits,
softmax - one-hot, which is written over the logits in the products' dtype: all the backward pass
needs (it applies the mean's 1 / N to the features and the features' gradient, far smaller than the logits).
"""

from __future__ import annotations

import torch
from torch import Tensor

ROWS_PER_BLOCK = 32
TINY_PROBABILITY = 1e-30  # fp32 keeps full precision down to about 1e-38


def _row_losses(logits: Tensor, bias: Tensor | None, targets: Tensor, grad_bias: Tensor | None,
                write_grad: bool) -> Tensor:
    """Per-row nll (fp32) of ``logits + bias`` (N, V) against ``targets`` (N,), a block of rows at a time.

    With ``write_grad`` the gradient of the summed loss over the N rows, softmax - one-hot, replaces the logits
    (the caller scales it: by 1 / N for the mean), and its column sums are added to ``grad_bias`` (when given).
    PyTorch's softmax kernels work through one row at a time in cache, which beats separate passes for the
    maximum, the exponential and the sum over a block.
    """
    losses = torch.empty(logits.shape[0])
    for start in range(0, logits.shape[0], ROWS_PER_BLOCK):
        stop = min(start + ROWS_PER_BLOCK, logits.shape[0])
        block = logits[start:stop].float() if bias is None else logits[start:stop] + bias  # fp32
        target = targets[start:stop, None]
        if not write_grad:
            losses[start:stop] = torch.log_softmax(block, 1).gather(1, target).squeeze(1).neg_()
            continue
        probabilities = torch.softmax(block, 1)
        target_probability = probabilities.gather(1, target).squeeze(1)
        loss = losses[start:stop]
        torch.log(target_probability, out=loss).neg_()
        tiny = target_probability < TINY_PROBABILITY
        if tiny.any():  # below it the probability has lost precision (or is 0): log-sum-exp minus the target logit
            rows = block[tiny]
            loss[tiny] = torch.logsumexp(rows, 1) - rows.gather(1, target[tiny]).squeeze(1)
        probabilities.scatter_add_(1, target, probabilities.new_full(target.shape, -1.0))
        if grad_bias is not None:
            grad_bias += probabilities.sum(0)
        logits[start:stop] = probabilities
    return losses


class LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, dtype: torch.dtype):
        features_low, weight_low = features.to(dtype), weight.to(dtype)
        logits = torch.mm(features_low, weight_low.t())  # (N, V), without the bias: it is added in fp32 below
        bias = None if bias is None else bias.detach()
        wants_grad = any(ctx.needs_input_grad[:3])
        grad_bias = torch.zeros(logits.shape[1]) if wants_grad and bias is not None else None
        losses = _row_losses(logits, bias, targets, grad_bias, write_grad=wants_grad)
        if wants_grad:
            ctx.save_for_backward(logits, features_low, weight_low, grad_bias)
        return losses.mean()

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        grad_logits, features_low, weight_low, grad_bias = ctx.saved_tensors  # of the summed loss
        # The mean's 1 / N goes on the smaller side of each product, never over the N x V logits or the V x H
        # weight gradient: on the features gradient (N x H) after its product, on the features (N x H) before the
        # weight gradient's product, which then only needs casting to fp32 (one pass, not a scaling and a cast).
        scale = float(grad_loss) / grad_logits.shape[0]
        grad_features = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_features = torch.mm(grad_logits, weight_low).float().mul_(scale)
        if ctx.needs_input_grad[1]:
            scaled_features = features_low * scale
            if weight_low.stride(0) == 1:  # a column-major weight: its (H, V) transpose, in row-major order
                grad_weight = torch.mm(scaled_features.t().contiguous(), grad_logits).float().t()
            else:
                grad_weight = torch.mm(grad_logits.t(), scaled_features).float()
        return grad_features, grad_weight, None if grad_bias is None else grad_bias * scale, None, None


def linear_cross_entropy(features: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                         dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Mean cross-entropy (fp32) of ``features @ weight.T + bias`` against ``targets``; products in ``dtype``.

    features: (N, H); weight: (V, H); bias: (V,) or None; targets: (N,) int64.
    """
    with torch.autocast(device_type="cpu", enabled=False):
        return LinearCrossEntropy.apply(features, weight, bias, targets, dtype)


def linear_nll(features: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """Per-row cross-entropy (fp32, no gradient) of ``features @ weight.T + bias`` against ``targets``, for
    scoring: the product in ``dtype``, the bias and the log-softmax in fp32, in one pass over the logits."""
    with torch.no_grad(), torch.autocast(device_type="cpu", enabled=False):
        logits = torch.mm(features.to(dtype), weight.to(dtype).t())
        return _row_losses(logits, None if bias is None else bias.float(), targets, None, write_grad=False)
