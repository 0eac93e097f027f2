"""Backward of the compiled multi-scale deformable attention op (CPU kernel), its instruction-set
variants and its registration.

Covered:
  * float64 gradcheck for value, sampling_locations and attention_weights (head dims 30, 32, 64,
    71, odd level sizes, batch > 1, points in the partially-outside border band and fully outside
    the map, whose gradients must be exactly 0) and float64 gradients against autograd through
    the reference;
  * float32 / bfloat16 / float16 gradients against the float64 reference;
  * bitwise determinism of the backward across runs and thread counts (1 vs 2);
  * every CPU instruction-set variant of the kernel (ATEN_CPU_CAPABILITY = default / avx2 /
    avx512), each in a subprocess running ms_deform_attn_cases.isa_report, forward and backward
    in every dtype against the float64 reference, and deterministic;
  * torch.library.opcheck of the operator's schema, fake kernels and autograd (slow).

Tolerances: GRADCHECK_TOL, FWD_TOL, GRAD_TOL and KINK_MARGIN (rationale in
ms_deform_attn_cases.py); torch.equal for determinism.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from deformable_detr.layers.ms_deform_attn_op import ms_deform_attn
from ms_deform_attn_cases import (
    FWD_TOL,
    GRADCHECK_TOL,
    KERNEL_DTYPES,
    KINK_MARGIN,
    LEVELS,
    assert_close_grads,
    kernel_grads,
    make_inputs,
    min_kink_distance,
    num_threads,
    reference_grads64,
    requires_extension,
)
from repo_paths import TESTS_DIR

pytestmark = requires_extension


# ----------------------------------------------------------------------------------------------
# Float64 gradcheck, and float64 gradients against the reference
# ----------------------------------------------------------------------------------------------


GRADCHECK_CASES = [
    # levels, N, Lq, M, D, P
    pytest.param(LEVELS, 2, 2, 2, 30, 2, id="D30-4levels-N2"),
    pytest.param(((3, 5), (1, 1)), 1, 3, 1, 32, 3, id="D32-N1"),
    pytest.param(((1, 3), (3, 1)), 2, 2, 1, 64, 2, id="D64-thin-levels"),
    pytest.param(((3, 3), (1, 2), (5, 1)), 2, 2, 2, 71, 2, id="D71-N2"),
]


@pytest.mark.parametrize("levels,N,Lq,M,D,P", GRADCHECK_CASES)
def test_gradcheck_float64(levels, N, Lq, M, D, P):
    value, shapes, starts, loc, weights = make_inputs(
        levels, N=N, Lq=Lq, M=M, D=D, P=P, seed=3, border=True, margin=1e-3
    )
    # A sample fully outside every level, in every image and head: its gradients must be 0.
    loc[:, 0, :, :, 0] = torch.tensor([1.7, -0.8], dtype=torch.float64)
    assert min_kink_distance(loc, shapes) >= 1e-3 - 1e-9
    inside = (loc >= 0) & (loc <= 1)
    assert inside.all(-1).any() and (~inside).any()  # both kinds of sample are present
    leaves = [t.clone().requires_grad_() for t in (value, loc, weights)]

    def fn(v, sl, aw):
        return ms_deform_attn(v, shapes, starts, sl, aw)

    assert torch.autograd.gradcheck(fn, leaves, **GRADCHECK_TOL)

    grad_out = torch.randn(
        N, Lq, M * D, dtype=torch.float64, generator=torch.Generator().manual_seed(4)
    )
    got = kernel_grads(value, shapes, starts, loc, weights, grad_out)
    assert torch.equal(got[2][:, 0, :, :, 0], torch.zeros_like(got[2][:, 0, :, :, 0]))
    assert torch.equal(got[3][:, 0, :, :, 0], torch.zeros_like(got[3][:, 0, :, :, 0]))
    expected = reference_grads64(value, shapes, loc, weights, grad_out)
    rtol, atol = FWD_TOL[torch.float64]
    torch.testing.assert_close(got[0], expected[0], rtol=rtol, atol=atol)
    assert_close_grads(got[1:], expected[1:], torch.float64)


# ----------------------------------------------------------------------------------------------
# Reduced-precision backward against the float64 reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("D", [32, 71])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_backward_matches_reference(dtype, D):
    value, shapes, starts, loc, weights = make_inputs(
        N=2, Lq=24, M=2, D=D, P=3, dtype=dtype, seed=5, border=True, margin=KINK_MARGIN[dtype]
    )
    assert min_kink_distance(loc, shapes) > 5e-4  # still off the kinks after rounding to dtype
    grad_out = torch.randn(2, 24, 2 * D, generator=torch.Generator().manual_seed(6)).to(dtype)
    got = kernel_grads(value, shapes, starts, loc, weights, grad_out)
    assert [g.dtype for g in got] == [dtype] * 4
    expected = reference_grads64(value, shapes, loc, weights, grad_out)
    assert all(float(e.abs().max()) > 0.1 for e in expected[1:])
    rtol, atol = FWD_TOL[dtype]
    torch.testing.assert_close(got[0].double(), expected[0], rtol=rtol, atol=atol)
    assert_close_grads(got[1:], expected[1:], dtype)


# ----------------------------------------------------------------------------------------------
# Determinism of the backward
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_bitwise_deterministic(dtype):
    # Many queries sampling near the same few pixels: every grad_value element gathers hundreds of
    # contributions, so any race or order-dependent sum would change the bits.
    N, Lq, M, D, P = 2, 400, 2, 32, 4
    value, shapes, starts, loc, weights = make_inputs(
        ((4, 5), (2, 3)), N=N, Lq=Lq, M=M, D=D, P=P, dtype=dtype, seed=7
    )
    g = torch.Generator().manual_seed(8)
    hot = torch.tensor([[0.3, 0.4], [0.55, 0.6]], dtype=torch.float64)  # two hot spots
    which = torch.randint(0, 2, loc.shape[:-1], generator=g)
    loc = (hot[which] + 0.02 * torch.randn(loc.shape, generator=g, dtype=torch.float64)).to(dtype)
    grad_out = torch.randn(N, Lq, M * D, generator=g).to(dtype)

    def run():
        return kernel_grads(value, shapes, starts, loc, weights, grad_out)

    with num_threads(2):
        first, second = run(), run()
    with num_threads(1):
        single = run()
    for a, b, c in zip(first, second, single):
        assert torch.equal(a, b)
        assert torch.equal(a, c)
    assert first[1].abs().max() > 1  # the hot pixels did gather many contributions


# ----------------------------------------------------------------------------------------------
# Every instruction-set variant of the CPU kernel, each in its own process
# ----------------------------------------------------------------------------------------------


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


ISA_REQUIREMENTS = {
    "default": set(),
    "avx2": {"avx2", "fma"},
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq"},
}


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_isa_variant(capability):
    missing = ISA_REQUIREMENTS[capability] - _cpu_flags()
    if missing:
        pytest.skip(f"this CPU lacks {sorted(missing)}")
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {TESTS_DIR!r})\n"
        "import ms_deform_attn_cases as cases\n"
        "print(json.dumps(cases.isa_report()))\n"
    )
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # The variable reached the process (PyTorch's own dispatch reports the capped level).
    assert report["torch_capability"].lower() == capability.lower()
    for dtype in KERNEL_DTYPES:
        entry = report[str(dtype)]
        assert entry["min_kink_distance"] > 5e-4
        assert entry["deterministic"], (capability, dtype)
        for key, ratio in entry["ratios"].items():
            assert ratio <= 1.0, (capability, str(dtype), key, entry)


# ----------------------------------------------------------------------------------------------
# The operator's registration (schema, fake kernels, autograd) as torch.library sees it
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_opcheck():
    value, shapes, starts, loc, weights = make_inputs(N=2, Lq=3, M=2, D=8, P=2, margin=1e-3)
    value = value.transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous on purpose
    args = (value.requires_grad_(), shapes, starts, loc.requires_grad_(), weights.requires_grad_())
    result = torch.library.opcheck(torch.ops.deformable_detr.ms_deform_attn.default, args)
    assert all(v == "SUCCESS" for v in result.values()), result
