"""The fast paths of the certified bounds (issue 24's cost targets) agree with plain references:
the ReLU/jump relaxation with the masked formulas, each convolution's backward kernel with a
vector-Jacobian product, and the blocked, in-place computation without grad with the plain one
under grad (float64: to rounding; float32, its oneDNN kernels and channels-last layouts: to
float32 rounding).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustact.certify as certify_mod
from robustact.certify import bound_graph, margin_bounds
from robustact.certify.bounds import _conv_back, _relu_relax
from robustact.certify.graph import Step
from robustact.defenses.jumprelu_retrofit import retrofit_jumprelu
from robustact.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _masked_relax(lo: torch.Tensor, hi: torch.Tensor, k: float
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The relaxation written with masks (the formulas of Zhang et al., κ = 0 for ReLU)."""
    zero, one = torch.zeros_like(lo), torch.ones_like(lo)
    dead, live, chord = hi <= k, lo > k, lo < 0
    width = hi - lo
    a_up = torch.where(dead, zero, torch.where(chord, hi / width, one))
    b_up = torch.where(dead | ~chord, zero, -lo * hi / width)
    steep = (hi - k) > (k - lo)
    a_lo = torch.where(dead, zero, torch.where(live | steep, one, zero))
    b_lo = torch.where(dead | live | ~steep, zero, torch.full_like(lo, -k))
    return a_up, a_lo, b_up, b_lo


@pytest.mark.parametrize("grad", [True, False])  # without grad, its temporaries in place
@pytest.mark.parametrize("kappa", [0.0, 0.05])
def test_relu_relaxation_matches_the_masked_formulas(kappa: float, grad: bool) -> None:
    g = torch.Generator().manual_seed(0)
    ends = torch.rand(2, 4000, generator=g, dtype=torch.float64) * 2 - 1
    # end points on the hinges and degenerate intervals, where the cases meet
    ends[:, :8] = torch.tensor([[0, 0, kappa, kappa, -0.5, 0, kappa, -0.2],
                                [0, 0.3, kappa, 0.4, 0, kappa, 0.5, kappa]])
    ends[:, 8:16] = ends[:1, 8:16]
    lo, hi = ends.min(0).values, ends.max(0).values
    step = Step("act", "act", act="jump" if kappa else "relu", kappa=kappa)
    with torch.set_grad_enabled(grad):
        a_up, diff, neg_b_up, diff_b = _relu_relax(step, lo, hi)
    r_up, r_lo, rb_up, rb_lo = _masked_relax(lo, hi, kappa)
    torch.testing.assert_close(a_up, r_up, rtol=1e-12, atol=0)
    torch.testing.assert_close(diff, r_lo - r_up, rtol=1e-12, atol=0)
    torch.testing.assert_close(-neg_b_up, rb_up, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(diff_b, rb_lo - rb_up, rtol=1e-12, atol=1e-15)


CONVS = [  # in, out, kernel, stride, padding, dilation, groups, input side
    (1, 4, 3, 1, 0, 1, 1, 9), (1, 4, 4, 2, 0, 1, 1, 10), (3, 6, 3, 2, 1, 1, 1, 10),
    (4, 6, 4, 2, 0, 1, 1, 11), (4, 4, 3, 1, 1, 2, 2, 9), (1, 3, 3, 2, 1, 1, 1, 9),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("cfg", CONVS)
def test_conv_backward_kernels_match_the_vector_jacobian_product(
        cfg: tuple[int, ...], channels_last: bool, dtype: torch.dtype) -> None:
    cin, cout, k, stride, pad, dil, groups, side = cfg
    torch.manual_seed(1)
    conv = nn.Conv2d(cin, cout, k, stride, pad, dil, groups).to(dtype)
    x = torch.zeros(1, cin, side, side, dtype=dtype)
    out_shape = conv(x).shape[1:]
    a = torch.randn(3, 5, *out_shape, dtype=dtype)
    if channels_last:
        a = a.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(a.shape)
    back, bias = _conv_back(conv, a, x.shape[1:])
    lin = lambda t: F.conv2d(t, conv.weight, None, stride, pad, dil, groups)  # noqa: E731
    _, vjp = torch.func.vjp(lin, torch.zeros(15, cin, side, side, dtype=dtype))
    (ref,) = vjp(a.reshape(15, *out_shape))
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(back, ref.view(3, 5, *x.shape[1:]), rtol=tol, atol=tol)
    assert bias is not None
    ref_bias = (a * conv.bias.view(-1, 1, 1)).flatten(2).sum(2)
    torch.testing.assert_close(bias, ref_bias, rtol=tol, atol=tol)


class StridedResidual(nn.Module):
    """Strided, padded convolutions, a residual add and the jump: the fast paths' other cases
    (channels-last coefficients, shared ones, output padding)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 16, 4, stride=2)
        self.fc = nn.Linear(16 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        h = torch.relu(h + self.conv2(h))
        return self.fc(torch.relu(self.conv3(h)).flatten(1))


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(3)
    small = create_model("ibp_small", dataset="mnist").eval()
    return {"ibp_small": small, "jump": retrofit_jumprelu(small, 0.05),
            "strided-residual": StridedResidual().eval()}


@pytest.mark.parametrize("name", ["ibp_small", "jump", "strided-residual"])
def test_blocked_inplace_bounds_match_the_plain_ones(name: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Without grad: blocks of samples, in-place relaxation in chunks, shared |W|; with grad:
    the whole batch, out of place. Same bounds, float64 to rounding; float32's kernels to
    float32 rounding."""
    monkeypatch.setattr(certify_mod, "BLOCK", 7)
    monkeypatch.setattr(certify_mod, "IBP_BLOCK", 9)
    model = _models()[name]
    x = torch.rand(23, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    y = model(x).argmax(1)
    exact = model.double()
    steps = bound_graph(exact)
    with torch.enable_grad():
        ref_ibp, ref_crown = margin_bounds(steps, x.double(), y, 0.02, "linf", 10)
    assert ref_crown is not None
    scale = ref_crown.abs().max()
    with torch.no_grad():
        ibp, crown = margin_bounds(steps, x.double(), y, 0.02, "linf", 10)
        ibp_only, _ = margin_bounds(steps, x.double(), y, 0.02, "linf", 10, crown=False)
    assert crown is not None
    for got, ref in ((ibp, ref_ibp), (crown, ref_crown), (ibp_only, ref_ibp)):
        assert ((got - ref.detach()).abs().max() / scale) < 1e-12
    f32 = exact.float()
    with torch.no_grad():
        ibp32, crown32 = margin_bounds(bound_graph(f32), x, y, 0.02, "linf", 10)
    assert crown32 is not None
    assert ((crown32.double() - ref_crown.detach()).abs().max() / scale) < 1e-5
    assert ((ibp32.double() - ref_ibp.detach()).abs().max() / scale) < 1e-5


def test_bounds_follow_weights_changed_between_calls() -> None:
    """|W| is shared within a call only: an edit that no version counter sees (``.data``)
    still changes the next call's bounds."""
    model = _models()["ibp_small"].double()
    steps = bound_graph(model)
    x = torch.rand(30, 1, 28, 28, dtype=torch.float64)
    y = torch.zeros(30, dtype=torch.long)
    with torch.no_grad():
        before = margin_bounds(steps, x, y, 0.02, "linf", 10)[0]
        model.body[2].weight.data.mul_(-0.5)
        after = margin_bounds(steps, x, y, 0.02, "linf", 10)[0]
        fresh = margin_bounds(bound_graph(model), x, y, 0.02, "linf", 10)[0]
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, fresh, rtol=0, atol=0)


def test_bounds_stay_differentiable_under_grad() -> None:
    """Certified training's path: gradients reach every layer through both bounds."""
    model = _models()["strided-residual"]
    x = torch.rand(5, 1, 28, 28)
    ibp, crown = margin_bounds(bound_graph(model), x, model(x).argmax(1), 0.05, "linf", 10)
    assert crown is not None
    (ibp.sum() + crown.sum()).backward()
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
