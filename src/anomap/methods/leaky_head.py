"""D's hidden layer, LeakyReLU and head as one autograd operation, for training.

The discriminator's train-mode pass is z = xWᵀ + b (n×hidden), then the score v·LeakyReLU(z)
per row. Left to autograd, the n×hidden values are written and read many times over a pass
and its backward (the LeakyReLU, its backward, the head's outer product, the bias sum), and
on a CPU memory traffic, not arithmetic, sets the speed: GLASS makes six such passes per step.
Writing LeakyReLU(z) = s·z + (1 − s)·ReLU(z) splits the score into a linear part that never
needs the n×hidden values and Σ_j v_j·ReLU(z_ij), and the backward needs only ReLU(z) (for v's
gradient) and the 0/1 pattern of z > 0 (for every other gradient, made in place from it),
each read once by a matrix product. Same values and gradients up to float rounding (tested
against the module pass); under autocast it computes in the autocast dtype, as the modules
would, and returns gradients in each input's own dtype.

Chunking the rows so the hidden values stay in cache was measured and not adopted: no faster
than this on the 2-core development machines, with extra rounding in bfloat16 sums.
benchmarks/discriminator_pass.py times the pass against the module sequence; on a GPU, where
a batch of 8 images is bound by kernel launches, its effect has not been measured.
"""

from __future__ import annotations

from typing import Any

import torch

LEAKY_SLOPE = 0.2  # the discriminator's LeakyReLU slope (§2.3)
# oneDNN's linear with a fused activation, in PyTorch builds with oneDNN (the x86 wheels);
# without it, the product and the ReLU run one after the other
_FUSED_LINEAR = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


def _linear_relu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ReLU(xWᵀ + b); on a CPU with oneDNN, one fused kernel that applies the ReLU while the
    product is in cache (in bfloat16 on an AMX Xeon, 5 ms against 16 ms for the product and
    an in-place ReLU at 19968×152 → 1024)."""
    fusable = x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
    if fusable and _FUSED_LINEAR is not None and torch.backends.mkldnn.enabled:
        return _FUSED_LINEAR(x, w, b, "relu", [], "")
    return torch.addmm(b, x, w.t()).relu_()


class _LeakyReluHead(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, head: torch.Tensor
    ) -> torch.Tensor:
        ctx.dtypes = (rows.dtype, weight.dtype, bias.dtype, head.dtype)
        device = rows.device.type
        autocast = torch.is_autocast_enabled(device)
        dtype = torch.get_autocast_dtype(device) if autocast else rows.dtype
        with torch.autocast(device, enabled=False):
            x, w, b, v = (t.to(dtype) for t in (rows, weight, bias, head))
            linear_part = torch.addmv(b @ v, x, w.t() @ v)  # Σ_j v_j z_ij
            rectified = _linear_relu(x, w, b)
            scores = torch.addmv(linear_part, rectified, v, beta=LEAKY_SLOPE, alpha=1 - LEAKY_SLOPE)
        ctx.save_for_backward(x, w, b, v, rectified)
        ctx.spent = False
        return scores

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if ctx.spent:
            raise RuntimeError("leaky_relu_head: one backward per forward (no retain_graph)")
        ctx.spent = True
        x, w, b, v, rectified = ctx.saved_tensors
        slope = LEAKY_SLOPE
        with torch.autocast(x.device.type, enabled=False):
            g = grad.to(x.dtype)
            g_x, g_sum = g @ x, g.sum()
            # ∂/∂v_j = Σ_i g_i LeakyReLU(z_ij), read before the values become their pattern
            d_head = slope * (w @ g_x + b * g_sum) + (1 - slope) * (g @ rectified)
            # rectified is not needed after this: its sign (1 where z > 0, else 0) in place,
            # which is why a second backward through the same pass is refused
            active = rectified.sign_()
            # ∂/∂z_ij = g_i v_j (s + (1 − s)·active_ij)
            d_rows = g[:, None] * (slope * (v @ w) + (1 - slope) * (active @ (v[:, None] * w)))
            weighted = torch.cat([g[:, None] * x, g[:, None]], dim=1)  # [g·x, g], n×(d+1)
            plain = torch.cat([g_x, g_sum[None]])
            d_both = v[:, None] * (slope * plain + (1 - slope) * (active.t() @ weighted))
        grads = (d_rows, d_both[:, :-1], d_both[:, -1], d_head)
        return tuple(t.to(dtype) for t, dtype in zip(grads, ctx.dtypes, strict=True))


def leaky_relu_head(
    rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, head: torch.Tensor
) -> torch.Tensor:
    """v·LeakyReLU(rows·Wᵀ + b) per row (n), differentiable in all four; `head` is v (hidden)."""
    return _LeakyReluHead.apply(rows, weight, bias, head)
