"""One LSTM layer over a whole sequence, for training on CPUs.

The forward pass runs the recurrence step by step, but every matrix product that does not sit on
the recurrence is one large GEMM over all time steps: the input projection in the forward pass,
and the input gradient and both weight gradients in the backward pass. With ``dtype=bfloat16`` the
products run in bf16 (fp32 accumulation) while the cell state, the gates and all gradients handed
back stay in fp32. The products' inputs are cast once and saved in ``dtype`` for the backward pass
(the input sequence, both weights, every step's h and gate gradient), which halves what bf16
training keeps for it and saves a cast of each. On this project's CPUs it trains faster than
PyTorch's oneDNN LSTM in fp32 and in bf16 (docs/benchmarks.md). The math and the parameter layout
are exactly ``nn.LSTM``'s (gates i, f, g, o), so the same weights run through ``nn.LSTM`` for
inference.
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
        recurrent = _recurrent_product(w_hh_low, batch)
        projected = torch.mm(x_low, w_ih_low.t()).float()
        projected = projected.add_(b_ih + b_hh).view(steps, batch, 4 * hidden)  # (T, B, 4H)
        gates = torch.empty(steps, batch, 4 * hidden)  # after their nonlinearities
        cells = torch.empty(steps, batch, hidden)
        tanh_cells = torch.empty(steps, batch, hidden)
        outputs = torch.empty(steps, batch, hidden)
        inputs_low = torch.empty(steps, batch, hidden, dtype=dtype)  # h_{t-1} in dtype: the recurrent product's input
        h, c = inputs_low[0].copy_(h0), c0
        for t in range(steps):
            pre = projected[t].add_(recurrent(h))  # (B, 4H)
            gate = gates[t]
            torch.sigmoid(pre[:, : 2 * hidden], out=gate[:, : 2 * hidden])  # i, f
            torch.tanh(pre[:, 2 * hidden : 3 * hidden], out=gate[:, 2 * hidden : 3 * hidden])  # g
            torch.sigmoid(pre[:, 3 * hidden :], out=gate[:, 3 * hidden :])  # o
            i, f, g, o = gate.chunk(4, dim=1)
            c = torch.addcmul(f * c, i, g, out=cells[t])
            torch.tanh(c, out=tanh_cells[t])
            torch.mul(o, tanh_cells[t], out=outputs[t])
            if t + 1 < steps:
                h = inputs_low[t + 1].copy_(outputs[t])
        ctx.save_for_backward(x_low, c0, w_ih_low, w_hh_low, gates, cells, tanh_cells, inputs_low)
        ctx.dtype = dtype
        return outputs, outputs[-1].clone(), c.clone()

    @staticmethod
    def backward(ctx, grad_outputs: Tensor | None, grad_h: Tensor | None, grad_c: Tensor | None):
        x_low, c0, w_ih_low, w_hh_low, gates, cells, tanh_cells, inputs_low = ctx.saved_tensors
        dtype = ctx.dtype
        steps, batch, hidden = cells.shape
        grad_gates = torch.empty(steps, batch, 4 * hidden)  # before the nonlinearities
        grad_gates_low = torch.empty(steps, batch, 4 * hidden, dtype=dtype)
        dh = torch.zeros(batch, hidden) if grad_h is None else grad_h.clone()
        dc = torch.zeros(batch, hidden) if grad_c is None else grad_c.clone()
        for t in range(steps - 1, -1, -1):
            if grad_outputs is not None:
                dh += grad_outputs[t]
            i, f, g, o = gates[t].chunk(4, dim=1)
            tanh_c = tanh_cells[t]
            c_prev = cells[t - 1] if t > 0 else c0
            dc += dh * o * (1 - tanh_c * tanh_c)
            d = grad_gates[t]
            torch.mul(dc * g, i * (1 - i), out=d[:, :hidden])
            torch.mul(dc * c_prev, f * (1 - f), out=d[:, hidden : 2 * hidden])
            torch.mul(dc * i, 1 - g * g, out=d[:, 2 * hidden : 3 * hidden])
            torch.mul(dh * tanh_c, o * (1 - o), out=d[:, 3 * hidden :])
            dc = dc * f
            dh = torch.mm(grad_gates_low[t].copy_(d), w_hh_low).float()
        flat_low = grad_gates_low.view(steps * batch, 4 * hidden)
        grad_x = torch.mm(flat_low, w_ih_low).float().view(steps, batch, -1)
        grad_w_ih = torch.mm(flat_low.t(), x_low).float()
        grad_w_hh = torch.mm(flat_low.t(), inputs_low.view(steps * batch, hidden)).float()
        grad_bias = grad_gates.view(steps * batch, 4 * hidden).sum(0)
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
