"""D's fused training operation against the plain expression it replaces."""

import pytest
import torch
import torch.nn.functional as F

from anomap.methods.leaky_head import LEAKY_SLOPE, leaky_relu_head


def _inputs(dtype: torch.dtype) -> list[torch.Tensor]:
    torch.manual_seed(0)
    rows, weight = torch.randn(300, 24), torch.randn(64, 24) * 0.3
    bias, head = torch.randn(64), torch.randn(64) * 0.1
    rows[:5], bias[:3] = 0, 0  # z = 0 exactly there: the kink takes the slope, as in torch
    return [t.to(dtype).requires_grad_() for t in (rows, weight, bias, head)]


def _plain(rows, weight, bias, head):
    return F.leaky_relu(F.linear(rows, weight, bias), LEAKY_SLOPE) @ head


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # float32: oneDNN's kernel
def test_values_and_gradients_equal_the_plain_expression(dtype):
    inputs = _inputs(dtype)
    upstream = torch.randn(300, dtype=dtype)
    results = []
    for function in (_plain, leaky_relu_head):
        scores = function(*inputs)
        results.append([scores, *torch.autograd.grad(scores, inputs, upstream)])
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}
    for got, expected in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, expected, **tolerance)


def test_autocast_rounds_as_the_plain_expression_does():
    """Under bfloat16 autocast: a bfloat16 output, gradients in each input's dtype, and no
    further from float32's than the plain expression under autocast is."""
    inputs = _inputs(torch.float32)
    exact = torch.autograd.grad(_plain(*inputs).sum(), inputs)
    errors = []
    for function in (_plain, leaky_relu_head):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            scores = function(*inputs)
        assert scores.dtype == torch.bfloat16
        grads = torch.autograd.grad(scores.float().sum(), inputs)
        assert all(g.dtype == torch.float32 for g in grads)
        errors.append([float((g - e).norm() / e.norm()) for g, e in zip(grads, exact, strict=True)])
    for fused, plain in zip(errors[1], errors[0], strict=True):
        assert fused <= 2 * plain + 1e-3


def test_a_second_backward_through_one_pass_is_refused():
    inputs = _inputs(torch.float32)
    scores = leaky_relu_head(*inputs).sum()
    scores.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        scores.backward()
