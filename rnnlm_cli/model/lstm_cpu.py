"""One LSTM layer over a whole sequence, for training on CPUs.

The forward pass runs the recurrence step by step, but every matrix product that does not sit on
the recurrence is one large GEMM over all time steps: the input projection in the forward pass,
and the input gradient and both weight gradients in the backward pass. With ``dtype=bfloat16`` the
products run in bf16 (fp32 accumulation) while the cell state, the gates and all gradients handed
back stay in fp32. The products' inputs are cast once and saved in ``dtype`` for the backward pass
(the input sequence, both weights, every step's h and gate gradient), which halves what bf16
training keeps for it and saves a cast of each. On this project's CPUs it trains faster than
PyTorch's oneDNN LSTM in fp32 and in bf16 (docs/benchmarks-history.md). The parameter layout is
``nn.LSTM``'s (gates i, f, g, o) and so is the math, so the same weights run through ``nn.LSTM`` for
inference; only tanh of the g gate is computed as 2 sigmoid(2 z) - 1 (the same value within 2e-7).

Each time step is a handful of operations on B x H and B x 4H values, so their number and the memory
they touch set the speed beside the products: one sigmoid covers all four gates (the g gate's
pre-activations arrive doubled, which is exact in floating point), the sigmoids
overwrite the pre-activations in place, and the backward pass works on one step's gate gradients in a
buffer that stays in cache, summing them for the bias gradient as it goes.
"""

from __future__ import annotations

import torch
from torch import Tensor


class LSTMLayerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor,
                dtype: torch.dtype):
        steps, batch, inputs = x.shape  # (T, B, E)
        hidden = w_hh.shape[1]
        x_low, w_ih_low, w_hh_low = x.reshape(steps * batch, inputs).to(dtype), w_ih.to(dtype), w_hh.to(dtype)
        # g = tanh(z) = 2 sigmoid(2 z) - 1: one sigmoid covers all four gates once the g pre-activations are doubled,
        # exactly (a power of two), through the g rows of the recurrent weight and the g columns of the projection
        w_hh_doubled = w_hh_low.clone()
        w_hh_doubled[2 * hidden : 3 * hidden] *= 2
        recurrent = _recurrent_product(w_hh_doubled, batch)
        scale = torch.tensor([1.0, 1.0, 2.0, 1.0]).repeat_interleave(hidden)  # (4H,): the g columns doubled
        projected = torch.mm(x_low, w_ih_low.t()).float()
        # (T, B, 4H): the pre-activations, each step's row then replaced by its gates' sigmoids: i, f, (g + 1) / 2, o
        gates = torch.addcmul((b_ih + b_hh) * scale, projected, scale, out=projected).view(steps, batch, 4, hidden)
        g_values = torch.empty(steps, batch, hidden)
        cells = torch.empty(steps, batch, hidden)
        tanh_cells = torch.empty(steps, batch, hidden)
        outputs = torch.empty(steps, batch, hidden)
        inputs_low = torch.empty(steps, batch, hidden, dtype=dtype)  # h_{t-1} in dtype: the recurrent product's input
        h, c = inputs_low[0].copy_(h0), c0
        per_step = zip(gates.unbind(0), g_values.unbind(0), cells.unbind(0), tanh_cells.unbind(0), outputs.unbind(0),
                       (*inputs_low[1:].unbind(0), None))
        for gate, g, cell, tanh_cell, output, next_input in per_step:
            gate.view(batch, 4 * hidden).add_(recurrent(h)).sigmoid_()
            i, f, sigmoid_g, o = gate.unbind(1)
            torch.mul(sigmoid_g, 2, out=g).sub_(1)
            c = torch.addcmul(f * c, i, g, out=cell)
            torch.mul(o, torch.tanh(c, out=tanh_cell), out=output)
            if next_input is not None:
                h = next_input.copy_(output)
        ctx.save_for_backward(x_low, c0, w_ih_low, w_hh_low, gates, g_values, cells, tanh_cells, inputs_low)
        ctx.dtype = dtype
        return outputs, outputs[-1].clone(), c.clone()

    @staticmethod
    def backward(ctx, grad_outputs: Tensor | None, grad_h: Tensor | None, grad_c: Tensor | None):
        x_low, c0, w_ih_low, w_hh_low, gates, g_values, cells, tanh_cells, inputs_low = ctx.saved_tensors
        steps, batch, hidden = cells.shape
        grad_gates_low = torch.empty(steps, batch, 4 * hidden, dtype=ctx.dtype)  # before the nonlinearities
        d = torch.empty(batch, 4 * hidden)  # one step's gate gradients in fp32, reused so that it stays in cache
        d_sum = torch.zeros(batch, 4 * hidden)  # summed over the steps, for the bias gradient
        dh = torch.zeros(batch, hidden) if grad_h is None else grad_h.clone()
        dc = torch.zeros(batch, hidden) if grad_c is None else grad_c.clone()
        if grad_outputs is not None:
            dh += grad_outputs[-1]
        for t in range(steps - 1, -1, -1):
            gate = gates[t]
            i, f, _, o = gate.unbind(1)
            tanh_c = tanh_cells[t]
            sigmoids = gate.view(batch, 4 * hidden)
            torch.addcmul(sigmoids, sigmoids, sigmoids, value=-1, out=d)  # s (1 - s); for g, tanh'(z) = 4 s (1 - s)
            # pre-activation gradients: d_i = dc g s_i', d_f = dc c_{t-1} s_f', d_g = dc i 4 s_g', d_o = dh tanh(c) s_o'
            d_i, d_f, d_g, d_o = d.view(batch, 4, hidden).unbind(1)
            d_o.mul_(tanh_c).mul_(dh)
            dc.addcmul_(dh, torch.addcmul(o, o * tanh_c, tanh_c, value=-1))  # o (1 - tanh(c)^2)
            d.view(batch, 4, hidden)[:, :3].mul_(dc.unsqueeze(1))
            d_i.mul_(g_values[t])
            d_f.mul_(cells[t - 1] if t > 0 else c0)
            d_g.mul_(i).mul_(4)
            dc.mul_(f)
            d_sum += d
            product = torch.mm(grad_gates_low[t].copy_(d), w_hh_low)  # the gradient of h_{t-1}, in dtype
            dh = torch.add(grad_outputs[t - 1], product) if t > 0 and grad_outputs is not None else product.float()
        flat_low = grad_gates_low.view(steps * batch, 4 * hidden)
        grad_x = torch.mm(flat_low, w_ih_low).float().view(steps, batch, -1)
        grad_w_ih = torch.mm(flat_low.t(), x_low).float()
        grad_w_hh = torch.mm(flat_low.t(), inputs_low.view(steps * batch, hidden)).float()
        grad_bias = d_sum.sum(0)
        return grad_x, dh, dc, grad_w_ih, grad_w_hh, grad_bias, grad_bias, None


def _recurrent_product(weight: Tensor, rows: int):
    """``h -> h @ weight.T`` for the forward recurrence, which multiplies by the same weight at every step.

    In bf16 the weight is packed once into oneDNN's blocked layout (the call PyTorch's own compiler makes for
    linear layers with constant weights), so that each step's product skips the repacking: a 20 x 650 by
    650 x 2600 product 165 -> 106 us on an AMX CPU (273 -> 206 us measured earlier on an AVX-512-bf16 one).
    Packing a 2600 x 650 weight takes about 0.7 ms there, against 2.5 ms for the transposed row-major copy
    that it replaces. Plain ``mm`` where oneDNN is missing.
    """
    if weight.dtype == torch.bfloat16 and torch.backends.mkldnn.is_available():
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        return lambda h: torch.ops.mkldnn._linear_pointwise(h, packed, None, "none", [], "")
    transposed = weight.t()
    return lambda h: torch.mm(h, transposed)


def lstm_layer(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor,
               dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """Outputs (T, B, H) and the final (h, c), each (B, H), of one LSTM layer; products in ``dtype``."""
    with torch.autocast(device_type="cpu", enabled=False):
        return LSTMLayerFunction.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, dtype)
