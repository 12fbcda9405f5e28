"""The output layer and the cross-entropy in one step: the mean loss for training, per-token nll for scoring.

``F.cross_entropy(linear(h).float(), y)`` under bf16 autocast makes several passes over the
N x vocab logits in memory: the product with the bias, a copy to fp32, log-softmax, and in the
backward pass a zero-filled gradient, the log-softmax gradient (a second exponential) and a copy
back to bf16. Here the forward pass works through the logits a block of rows at a time while the
block is in cache: the bias is added in fp32, one exponential gives both the loss of each row
(log-sum-exp) and the gradient of the mean loss with respect to its logits, (softmax - one-hot) / N,
which is written over the logits in the products' dtype: all the backward pass needs.
"""

from __future__ import annotations

import torch
from torch import Tensor

ROWS_PER_BLOCK = 32


def _row_losses(logits: Tensor, bias: Tensor | None, targets: Tensor, grad_bias: Tensor | None,
                write_grad: bool) -> Tensor:
    """Per-row nll (fp32) of ``logits + bias`` (N, V) against ``targets`` (N,), a block of rows at a time.

    With ``write_grad`` the gradient of the mean loss over the N rows replaces the logits, and its column sums
    are added to ``grad_bias`` (when given).
    """
    rows = logits.shape[0]
    losses = torch.empty(rows)
    for start in range(0, rows, ROWS_PER_BLOCK):
        stop = min(start + ROWS_PER_BLOCK, rows)
        block = logits[start:stop].float() if bias is None else logits[start:stop] + bias  # fp32
        target = targets[start:stop, None]
        target_logit = block.gather(1, target).squeeze(1)
        top = block.amax(1, keepdim=True)
        exp = block.sub_(top).exp_()
        total = exp.sum(1)
        losses[start:stop] = total.log().add_(top.squeeze(1)).sub_(target_logit)  # log-sum-exp - target
        if write_grad:  # d(mean loss)/d(logits) = (softmax - one-hot) / N, written over the logits
            grad = exp.mul_(total.mul_(rows).reciprocal_().unsqueeze(1))
            grad.scatter_add_(1, target, grad.new_full(target.shape, -1.0 / rows))
            if grad_bias is not None:
                grad_bias += grad.sum(0)
            logits[start:stop] = grad
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
        grad_logits, features_low, weight_low, grad_bias = ctx.saved_tensors
        scale = float(grad_loss)
        grad_features = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_features = torch.mm(grad_logits, weight_low).float()
        if ctx.needs_input_grad[1]:
            grad_weight = torch.mm(grad_logits.t(), features_low).float()
        if scale != 1.0:
            grad_features = None if grad_features is None else grad_features.mul_(scale)
            grad_weight = None if grad_weight is None else grad_weight.mul_(scale)
            grad_bias = None if grad_bias is None else grad_bias * scale
        return grad_features, grad_weight, grad_bias, None, None


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
