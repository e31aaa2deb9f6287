"""Fused LIF kernel against the PyTorch reference (kernels/lif/naive.py).

On a machine without CUDA the Triton kernels run under ``TRITON_INTERPRET=1`` on small shapes; with CUDA the same
tests run the compiled kernels on the GPU, and the ``gpu``-marked tests add large shapes (scripts/gpu_lif.sh).
Every comparison with the reference also runs the Numba CPU kernels (``cpu.py``) on CPU copies of the inputs.
Spikes are compared exactly; membranes and gradients by relative error ‖out − ref‖ / ‖ref‖.
"""

from __future__ import annotations

import importlib
import math
import os

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are decorated

from t4dm.kernels.lif import cpu, fused  # noqa: E402
from t4dm.kernels.lif.naive import SURROGATES, lif_multistep_naive, surrogate_grad  # noqa: E402

from .sm90 import run_compile_check  # noqa: E402

if DEVICE == "cpu" and not fused.INTERPRETED:  # imported earlier in this process without the interpreter
    fused = importlib.reload(fused)

LIFConfig = fused.LIFConfig
SURROGATE_NAMES = [name for name in SURROGATES if name != "superspike"]


@pytest.fixture(autouse=True)
def _nan_filled_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every buffer the launchers allocate starts as NaN: an element a kernel never writes fails the test."""
    monkeypatch.setattr(fused, "NAN_FILL_OUTPUTS", True)
    monkeypatch.setattr(cpu, "NAN_FILL_OUTPUTS", True)


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "output has NaN"
    out, ref = out.double(), ref.double()
    denom = ref.norm().item()
    return (out - ref).norm().item() / (denom if denom > 0 else 1.0)


def assert_spikes_equal(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape and out.dtype == ref.dtype
    diff = (out != ref).nonzero()
    assert diff.numel() == 0, (
        f"{diff.shape[0]} of {ref.numel()} spikes differ; first at index {diff[0].tolist()}: "
        f"got {out[tuple(diff[0])].item()}, reference {ref[tuple(diff[0])].item()}"
    )


def make_input(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """Input current that makes neurons fire at various rates (mean 0.8, std 1.2)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * 1.2 + 0.8).to(dtype).to(DEVICE)


def run_backends(
    x: torch.Tensor,
    v0: torch.Tensor | None,
    config: LIFConfig | None,
    seed: int = 1,
    **params,
):
    """Run the reference, the Triton kernels (with ``config``) and the Numba kernels (on CPU copies, their own
    config unless ``cpu_config``) with the same random loss Σ w·spikes + Σ u·v_final; return each backend's
    outputs and gradients, on DEVICE, the reference's first."""
    time_dim = params.get("time_dim", 0)
    gen = torch.Generator().manual_seed(seed)
    w_spikes = torch.randn(x.shape, generator=gen).to(DEVICE)
    state_shape = x.shape[: time_dim % x.dim()] + x.shape[time_dim % x.dim() + 1 :]
    w_membrane = torch.randn(state_shape, generator=gen).to(DEVICE)
    cpu_config = params.pop("cpu_config", None)
    results = []
    for backend in ("naive", "triton", "cpu"):
        device = "cpu" if backend == "cpu" else DEVICE
        xb = x.detach().to(device).clone().requires_grad_()
        vb = None if v0 is None else v0.detach().to(device).clone().requires_grad_()
        launch = {"triton": config, "cpu": cpu_config}.get(backend)
        spikes, v_final = fused.lif_multistep_impl(xb, v0=vb, backend=backend, config=launch, **params)
        loss = (spikes.float() * w_spikes.to(device)).sum() + (v_final * w_membrane.to(device)).sum()
        loss.backward()
        grads = (xb.grad, None if vb is None else vb.grad)
        results.append(
            tuple(None if t is None else t.to(DEVICE) for t in (spikes.detach(), v_final.detach(), *grads))
        )
    return results


def check_against_reference(x, v0=None, config=None, grad_tol=1e-5, **params) -> None:
    (s_ref, v_ref, gx_ref, gv_ref), *kernels = run_backends(x, v0, config, **params)
    for backend, (s, v, gx, gv) in zip(("triton", "cpu"), kernels, strict=True):
        assert_spikes_equal(s, s_ref)
        assert rel_err(v, v_ref) <= 1e-5, f"{backend} final membrane: relative error {rel_err(v, v_ref):.2e}"
        assert gx.dtype == x.dtype
        assert rel_err(gx, gx_ref) <= grad_tol, f"{backend} grad x: relative error {rel_err(gx, gx_ref):.2e}"
        if v0 is not None:
            assert rel_err(gv, gv_ref) <= grad_tol, (
                f"{backend} grad v0: relative error {rel_err(gv, gv_ref):.2e}"
            )


# ----------------------------------------------------------------------------------------------------------------
# the reference itself
# ----------------------------------------------------------------------------------------------------------------


def test_reference_by_hand() -> None:
    """tau=2, constant input 1.5: h = 0.75 (no spike), 1.125 (spike, reset to 0), 0.75; soft reset keeps 0.125."""
    x = torch.full((3, 1), 1.5)
    spikes, v = lif_multistep_naive(x, tau=2.0, v_threshold=1.0, v_reset=0.0)
    assert spikes.flatten().tolist() == [0.0, 1.0, 0.0]
    assert v.item() == 0.75
    spikes, v = lif_multistep_naive(x, tau=2.0, v_threshold=1.0, v_reset=None)
    assert spikes.flatten().tolist() == [0.0, 1.0, 0.0]
    assert v.item() == 0.125 + (1.5 - 0.125) / 2
    spikes, v = lif_multistep_naive(x, tau=2.0, decay_input=False, v_reset=0.0)
    assert spikes.flatten().tolist() == [1.0, 1.0, 1.0]  # h = 0 - 0/2 + 1.5 >= 1 every step


@pytest.mark.parametrize("backend", ["naive", "triton", "cpu"])
def test_a_membrane_exactly_at_threshold_fires(backend: str) -> None:
    """H(0) = 1: tau=2, input 2 from rest gives h = 0 + (2 - 0)/2 = 1.0 exactly, the threshold."""
    x = torch.full((2, 40), 2.0, device=DEVICE if backend == "triton" else "cpu")
    config = LIFConfig(block=64) if backend == "triton" else None
    spikes, v = fused.lif_multistep_impl(
        x, tau=2.0, v_threshold=1.0, v_reset=0.0, backend=backend, config=config
    )
    assert spikes.tolist() == [[1.0] * 40] * 2 and v.eq(0).all()


_PRIMITIVES = {
    "sigmoid": lambda u, a: torch.sigmoid(a * u),
    "atan": lambda u, a: torch.atan(math.pi / 2 * a * u) / math.pi + 0.5,
    "fast_sigmoid": lambda u, a: u / (1 + a * u.abs()),
    "piecewise_quadratic": lambda u, a: torch.where(
        u.abs() <= 1 / a, -(a * a) / 2 * u * u.abs() + a * u, torch.zeros_like(u)
    ),
    "erf": lambda u, a: torch.special.erfc(-a * u) / 2,
}


@pytest.mark.parametrize("surrogate", SURROGATE_NAMES)
def test_surrogate_is_derivative_of_primitive(surrogate: str) -> None:
    """The documented g'(u) is the derivative of the documented primitive (central differences, float64)."""
    alpha = 1.7
    u = torch.linspace(-2.0, 2.0, 401, dtype=torch.float64)
    u = u[((u.abs() - 1 / alpha).abs() > 1e-3) & (u.abs() > 1e-3)]  # kinks of |u|-based surrogates
    eps = 1e-6
    prim = _PRIMITIVES[surrogate]
    numeric = (prim(u + eps, alpha) - prim(u - eps, alpha)) / (2 * eps)
    torch.testing.assert_close(surrogate_grad(u, alpha, surrogate), numeric, rtol=1e-6, atol=1e-8)


def test_reference_matches_spikingjelly() -> None:
    """Optional: SpikingJelly's own multi-step LIF gives the same spikes and gradients (skipped if not installed)."""
    pytest.importorskip("loguru")
    sj_neuron = pytest.importorskip("spikingjelly.activation_based.functional.neuron")
    sj_surrogate = pytest.importorskip("spikingjelly.activation_based.surrogate")
    cases = [
        ("sigmoid", sj_surrogate.Sigmoid(alpha=4.0), 4.0),
        ("atan", sj_surrogate.ATan(alpha=2.0), 2.0),
        ("erf", sj_surrogate.Erf(alpha=2.0), 2.0),
        ("piecewise_quadratic", sj_surrogate.PiecewiseQuadratic(alpha=1.0), 1.0),
    ]
    x = make_input((40, 64)).cpu()
    for name, sj_fn, alpha in cases:
        for v_reset, decay_input, detach in [(0.0, True, False), (None, False, True), (-0.2, True, True)]:
            x1 = x.clone().requires_grad_()
            s1, v1, _ = sj_neuron.lif_multi_step(
                x1, torch.zeros(64), 2.5, decay_input, 1.0, v_reset, sj_fn, detach
            )
            ((s1 * torch.arange(40.0)[:, None]).sum() + v1.sum()).backward()
            x2 = x.clone().requires_grad_()
            s2, v2 = lif_multistep_naive(x2, 2.5, 1.0, v_reset, decay_input, name, alpha, detach_reset=detach)
            ((s2 * torch.arange(40.0)[:, None]).sum() + v2.sum()).backward()
            assert_spikes_equal(s2.detach(), s1.detach())
            assert rel_err(v2.detach(), v1.detach()) <= 1e-6
            assert rel_err(x2.grad, x1.grad) <= 1e-5, (name, v_reset, decay_input, detach)


# ----------------------------------------------------------------------------------------------------------------
# kernel against reference: modes
# ----------------------------------------------------------------------------------------------------------------

_MODES = [
    pytest.param(surrogate, v_reset, detach, id=f"{surrogate}-{'hard' if v_reset is not None else 'soft'}"
                 f"-{'detach' if detach else 'attached'}")
    for surrogate in SURROGATE_NAMES
    for v_reset in (0.0, None)
    for detach in (False, True)
]  # fmt: skip


@pytest.mark.parametrize(("surrogate", "v_reset", "detach_reset"), _MODES)
def test_modes_sequential(surrogate: str, v_reset: float | None, detach_reset: bool) -> None:
    # decay_input alternates with the mode so that both forms meet every surrogate
    decay_input = (SURROGATE_NAMES.index(surrogate) + detach_reset) % 2 == 0
    x = make_input((20, 24), seed=3)
    v0 = make_input((24,), seed=4) * 0.5
    check_against_reference(
        x, v0, LIFConfig(block=32), tau=2.5, v_threshold=1.0, v_reset=v_reset, decay_input=decay_input,
        surrogate=surrogate, alpha=2.0, detach_reset=detach_reset,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("T", "N"),
    [(1, 7), (63, 33), (9, 1), (12, 1000)],
    ids=lambda v: str(v),
)
def test_awkward_shapes(T: int, N: int) -> None:
    x = make_input((T, N), seed=T * 1000 + N)
    v0 = make_input((N,), seed=7) * 0.5
    check_against_reference(x, v0, LIFConfig(block=512 if N >= 512 else 32, sub=8))


def test_default_config_and_no_v0() -> None:
    """choose_config's launch shape, no initial membrane (zeros), v_reset away from zero."""
    x = make_input((30, 70), seed=11)
    check_against_reference(x, None, None, v_reset=-0.3, v_threshold=0.8, tau=3.0)


# ----------------------------------------------------------------------------------------------------------------
# time-parallel chunks: spikes exactly those of the sequential loop
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunk", "warmup", "v_reset", "tau"),
    [
        pytest.param(8, 0, 0.0, 2.0, id="C8-W0-hard-tau2"),
        pytest.param(8, 0, None, 2.0, id="C8-W0-soft-tau2"),
        pytest.param(16, 8, 0.0, 4.0, id="C16-W8-hard-tau4"),
        pytest.param(16, 16, None, 8.0, id="C16-W16-soft-tau8"),
    ],
)
def test_chunked_matches_reference(chunk: int, warmup: int, v_reset: float | None, tau: float) -> None:
    x = make_input((70, 40), seed=chunk + warmup)  # 70 steps: a partial last chunk and sub-chunk
    v0 = make_input((40,), seed=5) * 0.5
    check_against_reference(
        x, v0, LIFConfig(block=32, sub=8, chunk=chunk, warmup=warmup), tau=tau, v_reset=v_reset,
        surrogate="atan", alpha=2.0,
    )  # fmt: skip


def test_chunked_never_resynchronises() -> None:
    """Sub-threshold input, soft reset, slow decay: no spike, the guessed and true trajectories never meet within
    a chunk, so the fix-up walks every chunk to its end and carries the membrane across."""
    x = (make_input((48, 16), seed=9) * 0.01 + 0.05).contiguous()
    v0 = torch.full((16,), 0.4, device=DEVICE)
    check_against_reference(x, v0, LIFConfig(block=16, sub=8, chunk=8, warmup=0), tau=50.0, v_reset=None)


def test_fixup_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the fix-up pass the guessed chunk starts give wrong spikes here; with it, the reference's."""
    x = make_input((64, 32), seed=21)
    config = LIFConfig(block=32, sub=8, chunk=8, warmup=0)
    ref, _ = lif_multistep_naive(x)
    good, _ = fused.lif_multistep_impl(x, backend="triton", config=config)
    assert_spikes_equal(good, ref)

    class _NoLaunch:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    monkeypatch.setattr(fused, "_lif_fwd_fixup_kernel", _NoLaunch())
    monkeypatch.setattr(fused, "NAN_FILL_OUTPUTS", False)  # v_final is not written without the fix-up
    broken, _ = fused.lif_multistep_impl(x, backend="triton", config=config)
    assert not torch.equal(broken, ref)


def test_chunked_equals_sequential_kernel() -> None:
    """Chain: sequential kernel and chunked kernel agree bit for bit on spikes and final membrane."""
    x = make_input((96, 48), seed=13)
    s1, v1 = fused.lif_multistep_impl(x, backend="triton", config=LIFConfig(block=64))
    s2, v2 = fused.lif_multistep_impl(x, backend="triton", config=LIFConfig(block=16, chunk=16, warmup=8))
    assert_spikes_equal(s2, s1)
    assert torch.equal(v2, v1)


# ----------------------------------------------------------------------------------------------------------------
# layouts and dtypes
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "time_dim"),
    [((3, 17, 40), 1), ((50, 11), -1), ((9, 2, 3, 20), 0), ((4, 6, 12, 5), 2)],
    ids=["B3-T17-D40-t1", "N50-T11-tlast", "T9-2x3x20-t0", "4x6-T12-D5-t2"],
)
def test_layouts(shape: tuple[int, ...], time_dim: int) -> None:
    x = make_input(shape, seed=len(shape) + time_dim)
    state_shape = shape[: time_dim % len(shape)] + shape[time_dim % len(shape) + 1 :]
    v0 = make_input(state_shape, seed=2) * 0.5
    check_against_reference(x, v0, LIFConfig(block=32), time_dim=time_dim, surrogate="erf", alpha=2.0)


@pytest.mark.parametrize(
    ("dtype", "grad_tol"),
    [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)],
    ids=["bf16", "fp16"],
)
def test_half_precision_inputs(dtype: torch.dtype, grad_tol: float) -> None:
    """Spikes exactly the reference's on the same half-precision input (state in float32); input gradients are
    rounded to the input dtype, hence the dtype's tolerance."""
    x = make_input((24, 40), dtype=dtype, seed=17)
    v0 = make_input((40,), seed=18) * 0.5
    check_against_reference(x, v0, LIFConfig(block=64), grad_tol=grad_tol)
    check_against_reference(x, v0, LIFConfig(block=32, chunk=8, warmup=8), grad_tol=grad_tol)


def test_gradient_through_final_membrane_only() -> None:
    """A loss on the final membrane alone reaches x and v0 (no spike gradient)."""
    x = make_input((19, 20), seed=23)
    v0 = make_input((20,), seed=24) * 0.5
    grads = []
    for backend in ("naive", "triton"):
        xb, vb = x.clone().requires_grad_(), v0.clone().requires_grad_()
        _, v = fused.lif_multistep_impl(xb, v0=vb, backend=backend, config=LIFConfig(block=32, chunk=8))
        v.square().sum().backward()
        grads.append((xb.grad, vb.grad))
    assert rel_err(grads[1][0], grads[0][0]) <= 1e-5
    assert rel_err(grads[1][1], grads[0][1]) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("v_reset", [0.0, None, -0.3], ids=["hard", "soft", "negative-reset"])
@pytest.mark.parametrize("decay_input", [True, False], ids=["decay-input", "no-decay-input"])
def test_forward_only_path_is_the_reference_bit_for_bit(dtype, v_reset, decay_input) -> None:
    """Without gradients the CPU runs lif_multistep_forward (buffers reused, no autograd): the same spikes and
    membrane as the reference loop, exactly."""
    from t4dm.kernels.lif.naive import lif_multistep_forward

    x = (make_input((2, 150, 37), seed=51) * 1.3).to(dtype)
    v0 = make_input((2, 37), seed=52) * 0.5
    for tau, v_threshold in ((2.0, 1.0), (1.7, 0.3)):
        args = (tau, v_threshold, v_reset, decay_input)
        with torch.no_grad():
            ref_s, ref_v = lif_multistep_naive(x.movedim(1, 0), *args, v0=v0)
            s, v = lif_multistep_forward(x.movedim(1, 0), *args, v0=v0)
            public_s, public_v = fused.lif_multistep_impl(x, *args, time_dim=1, v0=v0, backend="naive")
        assert_spikes_equal(s, ref_s)
        assert torch.equal(v, ref_v)
        assert_spikes_equal(public_s, ref_s.movedim(0, 1))
        assert torch.equal(public_v, ref_v)
    assert torch.equal(v0, make_input((2, 37), seed=52) * 0.5)  # v0 is not written to


def test_the_forward_only_path_runs_exactly_when_no_gradient_is_needed(monkeypatch) -> None:
    calls = []
    real = fused.lif_multistep_forward
    monkeypatch.setattr(fused, "lif_multistep_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = make_input((12, 5), seed=53)
    with torch.no_grad():
        fused.lif_multistep_impl(x.requires_grad_(), backend="naive")
    fused.lif_multistep_impl(x.detach(), backend="naive")  # grad mode, but nothing requires a gradient
    assert len(calls) == 2
    spikes, _ = fused.lif_multistep_impl(x.detach().requires_grad_(), backend="naive")
    assert len(calls) == 2 and spikes.requires_grad  # the autograd loop


def test_inference_without_grad() -> None:
    x = make_input((16, 30), seed=25)
    with torch.no_grad():
        s, v = fused.lif_multistep_impl(x, backend="triton", config=LIFConfig(block=32))
    s_ref, v_ref = lif_multistep_naive(x)
    assert_spikes_equal(s, s_ref)
    assert rel_err(v, v_ref) <= 1e-6


# ----------------------------------------------------------------------------------------------------------------
# public function and input checks
# ----------------------------------------------------------------------------------------------------------------


def test_public_function() -> None:
    from t4dm.kernels.lif import lif_multistep

    x = make_input((10, 3, 8), seed=31)
    spikes = lif_multistep(x)
    assert spikes.shape == x.shape and spikes.dtype == x.dtype
    spikes2, membrane = lif_multistep(x, return_membrane=True)
    ref_s, ref_v = lif_multistep_naive(x)
    assert_spikes_equal(spikes, ref_s)
    assert_spikes_equal(spikes2, ref_s)
    assert membrane.shape == (3, 8) and membrane.dtype == torch.float32
    assert rel_err(membrane, ref_v) <= 1e-6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(x=torch.tensor(1.0)), "no time axis"),
        (dict(x=torch.ones(4, 3, dtype=torch.int32)), "float32, bfloat16 or float16"),
        (dict(x=torch.ones(4, 3, dtype=torch.float64)), "float32, bfloat16 or float16"),
        (dict(x=[[1.0]]), "torch.Tensor"),
        (dict(time_dim=2), "time_dim"),
        (dict(tau=1.0), "tau must be > 1"),
        (dict(tau=0.5, decay_input=False), "tau must be > 1"),
        (dict(tau=float("nan")), "tau must be a finite"),
        (dict(surrogate="relu"), "surrogate must be one of"),
        (dict(alpha=0.0), "alpha must be > 0"),
        (dict(v_threshold=float("inf")), "v_threshold"),
        (dict(v0=torch.zeros(3, 4)), r"expected \(3,\), got \(3, 4\)"),
        (dict(v0=torch.zeros(3, dtype=torch.int64)), "floating-point"),
        (dict(x=torch.ones(0, 3)), "empty time axis"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_input_raises(kwargs: dict, message: str) -> None:
    from t4dm.kernels.lif import lif_multistep

    kwargs = {"x": torch.ones(4, 3), **kwargs}
    with pytest.raises(ValueError, match=message):
        lif_multistep(**kwargs)


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="power of two"):
        LIFConfig(block=100)
    with pytest.raises(ValueError, match="multiple of sub"):
        LIFConfig(sub=8, chunk=12)


# ----------------------------------------------------------------------------------------------------------------
# the Numba CPU kernels' own launch shapes, threads and arithmetic
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "time_dim", "block", "sub"),
    [
        ((37, 50), 0, 16, 1),  # a checkpoint every step; 50 = 3 blocks of 16 and a partial one
        ((37, 50), 0, 16, 3),  # T not a multiple of sub
        ((3, 41, 24), 1, 16, 16),  # several p, a sub-chunk longer than the rest of the sequence
        ((9, 5, 3), 0, 16, 4),  # Q < 16: transposed to [1, T, P·Q] first
    ],
    ids=["sub1", "sub3", "B3-sub16", "transposed"],
)
def test_cpu_kernels_launch_shapes(shape: tuple[int, ...], time_dim: int, block: int, sub: int) -> None:
    x = make_input(shape, seed=sum(shape) + sub)
    state_shape = shape[: time_dim % len(shape)] + shape[time_dim % len(shape) + 1 :]
    v0 = make_input(state_shape, seed=61) * 0.5
    check_against_reference(
        x, v0, LIFConfig(block=32), cpu_config=LIFConfig(block=block, sub=sub), time_dim=time_dim, surrogate="sigmoid",
        v_reset=None if sub % 2 else 0.0, detach_reset=sub == 3,
    )  # fmt: skip


def test_cpu_threads_split_the_blocks() -> None:
    """Above the hand-off threshold the blocks are shared among threads (three here, unevenly): every element
    written (outputs start as NaN), and the results those of one thread, bit for bit."""
    x = torch.randn(40, 2000, generator=torch.Generator().manual_seed(3)) * 1.2 + 0.8  # 80,000 neuron-steps
    assert x.numel() >= cpu._MIN_PARALLEL
    grad = torch.randn(40, 2000, generator=torch.Generator().manual_seed(4))
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            xg = x.clone().requires_grad_()
            spikes, v = fused.lif_multistep_impl(xg, backend="cpu")
            (spikes * grad).sum().add(v.sum()).backward()
            results.append((spikes, v, xg.grad))
    finally:
        torch.set_num_threads(threads)
    for one, many in zip(*results, strict=True):
        assert torch.equal(one, many)
    assert_spikes_equal(results[0][0], lif_multistep_naive(x)[0])


def _lif_in_child(queue) -> None:
    # No PyTorch operation that runs in parallel here: GNU OpenMP's pool (PyTorch's) hangs in a forked child
    # whose parent used it, with or without us (DataLoader workers run one thread for that reason).
    import numpy as np

    cpu.NAN_FILL_OUTPUTS = False
    x = torch.from_numpy(np.random.default_rng(0).normal(0.8, 1.2, (40, 2000)).astype(np.float32))
    spikes, _ = fused.lif_multistep_impl(x, backend="cpu")
    queue.put(int(spikes.numpy().sum()))


def test_cpu_kernels_run_in_a_forked_child() -> None:
    """The thread pool belongs to the process that made it: a forked child (a DataLoader worker) makes its own
    instead of handing work to threads it does not have (which would hang)."""
    import multiprocessing

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fused.lif_multistep_impl(torch.randn(40, 2000), backend="cpu")  # the parent's pool exists
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_lif_in_child, args=(queue,))
        child.start()
        child.join(timeout=60)
        alive = child.is_alive()
        if alive:
            child.kill()
        assert not alive, "the forked child hung"
        assert child.exitcode == 0 and queue.get(timeout=5) > 0
    finally:
        torch.set_num_threads(threads)


def test_cpu_exp_within_one_ulp() -> None:
    """The vectorisable exp of the sigmoid and erf surrogates against float64's, over its whole range."""
    import numpy as np

    x = np.linspace(-87.3, 88.0, 1_000_001, dtype=np.float32)
    out, bits = np.empty_like(x), np.empty(x.shape, np.int32)
    cpu._exp_row(x, out, bits)
    exact = np.exp(x.astype(np.float64))
    ulp = np.abs(out - exact) / np.spacing(exact.astype(np.float32))
    assert ulp.max() <= 1.0, f"{ulp.max():.2f} ulp at x = {x[ulp.argmax()]}"
    clamped = np.array([-1000.0, 1000.0], dtype=np.float32)  # clamped to [-87.3, 88]: tiny and huge, finite
    cpu._exp_row(clamped, out[:2], bits[:2])
    assert 0 < out[0] < 1e-37 and 1e38 < out[1] < np.inf


def test_backend_checks() -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        fused.lif_multistep_impl(torch.ones(3, 2), backend="numba")
    with pytest.raises(ValueError, match="backend='cpu' runs on CPU tensors, got x on meta"):
        fused.lif_multistep_impl(torch.ones(3, 2, device="meta"), backend="cpu")


# ----------------------------------------------------------------------------------------------------------------
# the operators (torch.library): opcheck, and torch.compile in one graph
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("v_reset", [0.0, None], ids=["hard", "soft"])
@pytest.mark.parametrize("ops", ["triton", "cpu"])
def test_operators_pass_opcheck(v_reset: float | None, ops: str) -> None:
    """Schema, fake (meta) shapes, the registered autograd and AOT dispatch, as torch.library checks them."""
    device = DEVICE if ops == "triton" else "cpu"
    fwd_op, bwd_op = (fused._lif_fwd_op, fused._lif_bwd_op) if ops == "triton" else (
        fused._lif_fwd_cpu_op, fused._lif_bwd_cpu_op)  # fmt: skip
    x = make_input((2, 27, 20), seed=31).to(device).requires_grad_()  # T not a multiple of sub
    v0 = (make_input((2, 20), seed=32) * 0.5).to(device).requires_grad_()
    config = (32, 1, 8, 8, 8)  # block, num_warps, sub, chunk, warmup: three chunks with a fix-up
    args = (x, v0, 2.0, 1.0, v_reset, True, "atan", 2.0, False, True, *config)
    torch.library.opcheck(fwd_op, args)
    _, _, ckpt = fwd_op(*args)
    grad = make_input((2, 27, 20), seed=33).to(device)
    bwd_args = (
        x.detach(),
        ckpt.detach(),
        grad,
        v0.detach(),
        2.0,
        1.0,
        v_reset,
        True,
        "atan",
        2.0,
        False,
        *config,
    )
    torch.library.opcheck(bwd_op, bwd_args)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_compiles_in_one_graph_and_matches_the_reference(dynamic: bool, backend: str) -> None:
    """torch.compile(fullgraph=True) through the kernels' operators: no graph break (on the CPU, no loop over time
    to unroll), forward and backward as eager."""
    torch._dynamo.reset()
    config = LIFConfig(block=32, chunk=8, warmup=8) if backend == "triton" else None
    device = DEVICE if backend == "triton" else "cpu"

    def run(x: torch.Tensor, v0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return fused.lif_multistep_impl(x, v0=v0, time_dim=1, backend=backend, config=config)

    compiled = torch.compile(run, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    for T in (24, 40):  # a second length: one graph with dynamic shapes, a recompile without
        x = make_input((2, T, 20), seed=T).to(device)
        v0 = make_input((2, 20), seed=T + 1).to(device) * 0.5
        xc, vc = x.clone().requires_grad_(), v0.clone().requires_grad_()
        spikes, v_final = compiled(xc, vc)
        (spikes.sum() + v_final.square().sum()).backward()
        xr, vr = x.clone().requires_grad_(), v0.clone().requires_grad_()
        ref_spikes, ref_v = lif_multistep_naive(xr.transpose(0, 1), v0=vr)
        (ref_spikes.sum() + ref_v.square().sum()).backward()
        assert_spikes_equal(spikes, ref_spikes.transpose(0, 1))
        assert rel_err(v_final, ref_v) <= 1e-5
        assert rel_err(xc.grad, xr.grad) <= 1e-5 and rel_err(vc.grad, vr.grad) <= 1e-5


@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_torch_export_carries_the_operator(backend: str) -> None:
    """torch.export traces each path to one operator node; the exported program gives the same output."""
    config = LIFConfig(block=32, chunk=8, warmup=8) if backend == "triton" else None

    class Neurons(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return fused.lif_multistep_impl(x, time_dim=1, backend=backend, config=config)

    x = make_input((2, 24, 20), seed=41).to(DEVICE if backend == "triton" else "cpu")
    program = torch.export.export(Neurons(), (x,))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    op = "t4dm.lif_fwd.default" if backend == "triton" else "t4dm.lif_fwd_cpu.default"
    assert targets.count(op) == 1
    spikes, v_final = program.module()(x)
    ref_spikes, ref_v = Neurons()(x)
    assert_spikes_equal(spikes, ref_spikes)
    assert torch.equal(v_final, ref_v)


# ----------------------------------------------------------------------------------------------------------------
# the kernels compile for Hopper (catches what the interpreter lets through); needs no GPU
# ----------------------------------------------------------------------------------------------------------------


def test_kernels_compile_for_sm90() -> None:
    """The kernels compile to Hopper machine code (ptxas ships with triton; no GPU needed): the interpreter lets
    through things the compiler rejects."""
    pytest.importorskip("triton.backends.compiler")
    result = run_compile_check("lif")
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("compiled") == 4


# ----------------------------------------------------------------------------------------------------------------
# GPU: large shapes (scripts/gpu_lif.sh)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("shape", "time_dim", "dtype", "grad_tol"),
    [
        ((2048, 8192), 0, torch.float32, 1e-5),
        ((2048, 8192), 0, torch.bfloat16, 1e-2),
        ((16, 1 << 20), 0, torch.float32, 1e-5),
        ((16, 1 << 20), 0, torch.bfloat16, 1e-2),
        ((4, 1024, 1024), 1, torch.float32, 1e-5),
    ],
    ids=["T2048-N8192-fp32", "T2048-N8192-bf16", "T16-N1M-fp32", "T16-N1M-bf16", "B4-T1024-D1024-fp32"],
)
def test_gpu_large(shape: tuple[int, ...], time_dim: int, dtype: torch.dtype, grad_tol: float) -> None:
    x = make_input(shape, dtype=dtype, seed=41)
    state_shape = shape[:time_dim] + shape[time_dim + 1 :]
    v0 = make_input(state_shape, seed=42) * 0.5
    (s_ref, v_ref, gx_ref, gv_ref), *kernels = run_backends(x, v0, None, time_dim=time_dim)
    for s, v, gx, gv in kernels:  # Triton, and Numba on the host
        assert int(s.sum().item()) == int(s_ref.sum().item())
        assert_spikes_equal(s, s_ref)
        assert rel_err(v, v_ref) <= 1e-5
        assert rel_err(gx, gx_ref) <= grad_tol
        assert rel_err(gv, gv_ref) <= grad_tol


_GPU_MODES = [
    pytest.param(
        surrogate, v_reset, i % 2 == 1, id=f"{surrogate}-{'hard' if v_reset is not None else 'soft'}"
    )
    for i, surrogate in enumerate(SURROGATE_NAMES)
    for v_reset in (0.0, None)
]


@pytest.mark.gpu
@pytest.mark.parametrize(("surrogate", "v_reset", "detach_reset"), _GPU_MODES)
def test_gpu_modes_chunked(surrogate: str, v_reset: float | None, detach_reset: bool) -> None:
    """Every surrogate and reset on the time-parallel path at a medium shape (detach_reset alternates)."""
    x = make_input((1024, 2048), seed=43)
    v0 = make_input((2048,), seed=44) * 0.5
    check_against_reference(
        x, v0, LIFConfig(block=256, num_warps=2, chunk=64, warmup=24), v_reset=v_reset, surrogate=surrogate,
        alpha=2.0, detach_reset=detach_reset, decay_input=not detach_reset,
    )  # fmt: skip
