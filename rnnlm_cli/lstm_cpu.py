"""One LSTM layer over a whole sequence, for training on CPUs.

The forward pass runs the recurrence step by step, but every matrix product that does not sit on
the recurrence is one large GEMM over all time steps: the input projection in the forward pass,
and the input gradient and both weight gradients in the backward pass. With ``dtype=bfloat16`` the
products run in bf16 (fp32 accumulation) while the cell state, the gates and all gradients handed
back stay in fp32. On this project's CPUs it trains faster than PyTorch's oneDNN LSTM in fp32 and
in bf16 (docs/benchmarks.md). The math and the parameter layout are exactly ``nn.LSTM``'s
(gates i, f, g, o), so the same weights run through ``nn.LSTM`` for inference.
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
        w_hh_t = w_hh.to(dtype).t().contiguous()  # (H, 4H) in row-major order: the faster layout for mm
        projected = torch.mm(x.reshape(steps * batch, inputs).to(dtype), w_ih.t().to(dtype)).float()
        projected = projected.add_(b_ih + b_hh).view(steps, batch, 4 * hidden)  # (T, B, 4H)
        gates = torch.empty(steps, batch, 4 * hidden)  # after their nonlinearities
        cells = torch.empty(steps, batch, hidden)
        tanh_cells = torch.empty(steps, batch, hidden)
        outputs = torch.empty(steps, batch, hidden)
        h, c = h0, c0
        for t in range(steps):
            pre = projected[t].add_(torch.mm(h.to(dtype), w_hh_t).float())  # (B, 4H)
            gate = gates[t]
            torch.sigmoid(pre[:, : 2 * hidden], out=gate[:, : 2 * hidden])  # i, f
            torch.tanh(pre[:, 2 * hidden : 3 * hidden], out=gate[:, 2 * hidden : 3 * hidden])  # g
            torch.sigmoid(pre[:, 3 * hidden :], out=gate[:, 3 * hidden :])  # o
            i, f, g, o = gate.chunk(4, dim=1)
            c = torch.addcmul(f * c, i, g, out=cells[t])
            torch.tanh(c, out=tanh_cells[t])
            h = torch.mul(o, tanh_cells[t], out=outputs[t])
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, gates, cells, tanh_cells, outputs)
        ctx.dtype = dtype
        return outputs, h.clone(), c.clone()

    @staticmethod
    def backward(ctx, grad_outputs: Tensor, grad_h: Tensor, grad_c: Tensor):
        x, h0, c0, w_ih, w_hh, gates, cells, tanh_cells, outputs = ctx.saved_tensors
        dtype = ctx.dtype
        steps, batch, inputs = x.shape
        hidden = w_hh.shape[1]
        w_hh_low = w_hh.to(dtype)
        grad_gates = torch.empty(steps, batch, 4 * hidden)  # before the nonlinearities
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
            dh = torch.mm(d.to(dtype), w_hh_low).float()
        flat = grad_gates.view(steps * batch, 4 * hidden)
        flat_low = flat.to(dtype)
        grad_x = torch.mm(flat_low, w_ih.to(dtype)).float().view(steps, batch, inputs)
        grad_w_ih = torch.mm(flat_low.t(), x.reshape(steps * batch, inputs).to(dtype)).float()
        previous = torch.cat([h0[None], outputs[:-1]]).view(steps * batch, hidden)
        grad_w_hh = torch.mm(flat_low.t(), previous.to(dtype)).float()
        grad_bias = flat.sum(0)
        return grad_x, dh, dc, grad_w_ih, grad_w_hh, grad_bias, grad_bias, None


def lstm_layer(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor,
               dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """Outputs (T, B, H) and the final (h, c), each (B, H), of one LSTM layer; products in ``dtype``."""
    with torch.autocast(device_type="cpu", enabled=False):
        return LSTMLayerFunction.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, dtype)
