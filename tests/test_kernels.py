"""Sparse conv formats and Triton kernels vs the pure-PyTorch reference (Triton interpreter on CPU, CUDA if present)."""

import os
import subprocess
import sys

import pytest
import torch

from lipdeploy.kernels import (
    SparseConv2d,
    check_format,
    choose_fastest,
    pack_conv_weight,
    sparse_conv2d,
    sparse_conv2d_reference,
    unpack_conv_weight,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ATOL, RTOL = 1e-5, 1e-4


def make_mask(shape, sparsity, seed, kind="random"):
    """0/1 float mask with exactly round((1 - sparsity) * numel) ones (random) or whole zero kernels + random taps."""
    g = torch.Generator().manual_seed(seed)
    numel = 1
    for s in shape:
        numel *= s
    if kind == "random":
        keep = round((1 - sparsity) * numel)
        m = torch.zeros(numel)
        m[torch.randperm(numel, generator=g)[:keep]] = 1
        return m.view(shape)
    # "kernels": drop whole (cout, cin) kernels with prob sparsity, and 30% of the taps of the survivors
    kmask = (torch.rand(shape[:2], generator=g) >= sparsity).float()[:, :, None, None]
    taps = (torch.rand(shape, generator=g) >= 0.3).float()
    taps[..., shape[2] // 2, shape[3] // 2] = 1  # every kept kernel keeps at least its centre tap
    return kmask * taps


def close(a, b, what):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------------------------------------------------
# format
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csr", "kernel"])
@pytest.mark.parametrize("shape", [(5, 3, 3, 3), (9, 7, 1, 1), (6, 4, 5, 5), (8, 7, 3, 3), (1, 1, 1, 1)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("kind", ["random", "kernels"])
def test_pack_unpack_roundtrip(fmt, shape, sparsity, kind):
    torch.manual_seed(0)
    w = torch.randn(shape)
    m = make_mask(shape, sparsity, seed=1, kind=kind)
    p = pack_conv_weight(w, m, format=fmt)
    check_format(p)
    dense = unpack_conv_weight(p)
    assert dense.dtype == w.dtype
    assert torch.equal(dense, w * m), "unpack must be exact"
    if fmt == "csr":
        assert p.nnz == int(m.sum())
        assert p.values.shape == (int(m.sum()),)
    else:
        nk = int(m.reshape(shape[0], shape[1], -1).any(dim=2).sum())
        assert p.values.shape == (nk * shape[2] * shape[3],)
        assert int(p.tap_mask.sum()) == int(m.sum())
    # repacking the unpacked weight with the same mask gives identical arrays
    q = pack_conv_weight(dense, m, format=fmt)
    for name in ("values", "row_ptr", "idx", "col_row", "col_perm"):
        assert torch.equal(getattr(p, name), getattr(q, name)), name


def test_pack_keeps_explicit_zero_values_and_default_mask():
    w = torch.zeros(2, 2, 3, 3)
    m = torch.zeros_like(w)
    m[0, 1, 2, 0] = 1  # a mask nonzero whose value is exactly 0 is still stored (and trainable)
    p = pack_conv_weight(w, m)
    assert p.nnz == 1 and p.values.item() == 0.0
    assert p.idx.item() == 1 * 9 + 2 * 3 + 0 and p.row_ptr.tolist() == [0, 1, 1]
    w2 = torch.randn(3, 2, 3, 3) * (torch.rand(3, 2, 3, 3) > 0.5)
    assert torch.equal(pack_conv_weight(w2).to_dense(), w2)  # mask=None -> weight != 0


def test_csr_layout_tap_major():
    w = torch.arange(1, 2 * 3 * 9 + 1, dtype=torch.float32).view(2, 3, 3, 3)
    p = pack_conv_weight(w, torch.ones_like(w))
    check_format(p)
    kk = 9
    row0 = p.idx[: p.row_ptr[1]].tolist()
    assert [i % kk for i in row0] == sorted(i % kk for i in row0)  # tap-major
    assert [i // kk for i in row0[:3]] == [0, 1, 2]
    assert p.tap_ptr[1].tolist() == [27 + 3 * t for t in range(kk + 1)]


def test_bad_format_and_shapes():
    with pytest.raises(ValueError):
        pack_conv_weight(torch.randn(3, 3, 3, 3), format="bsr")
    with pytest.raises(ValueError):
        pack_conv_weight(torch.randn(3, 3, 3), torch.ones(3, 3, 3))
    p = pack_conv_weight(torch.randn(4, 3, 3, 3))
    with pytest.raises(ValueError):
        sparse_conv2d_reference(torch.randn(1, 2, 8, 8), p)  # wrong channel count
    with pytest.raises(ValueError):
        sparse_conv2d_reference(torch.randn(1, 3, 2, 8), p, padding=2, padding_mode="reflect")


# ---------------------------------------------------------------------------------------------------------------------
# kernels vs reference: forward, grad input, grad of the nnz values, grad bias
# ---------------------------------------------------------------------------------------------------------------------

# (k, stride, padding, padding_mode): 1x1/3x3/5x5, stride 1/2, reflect/zeros/none
GEOMS = [
    (3, 1, 1, "reflect"),
    (3, 2, 1, "reflect"),
    (3, 1, 1, "zeros"),
    (3, 2, 1, "zeros"),
    (1, 1, 0, "zeros"),
    (1, 2, 0, "reflect"),
    (3, 1, 0, "zeros"),
    (5, 2, 2, "reflect"),
]
SHAPES = [(1, 3, 5, 9, 11), (2, 7, 9, 8, 8), (1, 4, 6, 13, 7), (2, 5, 8, 9, 11)]  # N, Cin, Cout, H, W
SPARSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]


def _cases():
    cases = []
    i = 0
    for gi, geom in enumerate(GEOMS):
        for si, sp in enumerate(SPARSITIES):
            # rotate shapes and the fused epilogue so every geometry meets every sparsity, each shape and both flags
            shape = SHAPES[(gi + si) % len(SHAPES)]
            fused = (gi + si) % 2 == 0
            if geom[0] == 5:
                if sp not in (0.9, 0.99):
                    continue  # 25 unrolled taps are slow in the interpreter: 5x5 is covered at 90% and 99%
                shape = SHAPES[0]
            cases.append(
                pytest.param(
                    geom,
                    shape,
                    sp,
                    fused,
                    "csr",
                    i,
                    id=f"csr-k{geom[0]}s{geom[1]}p{geom[2]}"
                    f"{geom[3][0]}-{'x'.join(map(str, shape))}-sp{sp}-{'fused' if fused else 'plain'}",
                )
            )
            i += 1
    for gi, geom in enumerate(GEOMS[:5]):
        shape = SHAPES[(0, 2, 1, 2, 0)[gi]]  # one N=2 case; the rest N=1 (interpreter time)
        cases.append(
            pytest.param(
                geom,
                shape,
                0.6,
                gi % 2 == 0,
                "kernel",
                100 + gi,
                id=f"kernel-k{geom[0]}s{geom[1]}p{geom[2]}{geom[3][0]}-{'x'.join(map(str, shape))}",
            )
        )
    return cases


def _run_both(x, packed, bias, stride, padding, mode, slope, ref_dtype=None):
    """Triton and reference outputs and grads (x, values, bias) for the same random upstream gradient; the reference
    in ``ref_dtype`` where given (float64 on CUDA: cuDNN may pick Winograd or FFT for a float32 3x3 stride-1 conv,
    whose error is no reference), its results cast back to the Triton results' dtype."""
    out = {}
    g = None
    for name, fn in (("triton", sparse_conv2d), ("ref", sparse_conv2d_reference)):
        dt = ref_dtype if name == "ref" and ref_dtype is not None else x.dtype
        xi = x.detach().clone().to(dt).requires_grad_(True)
        vi = packed.values.detach().clone().to(dt).requires_grad_(True)
        bi = bias.detach().clone().to(dt).requires_grad_(True) if bias is not None else None
        y = fn(xi, packed.with_values(vi), bi, stride, padding, mode, slope)
        if g is None:
            g = torch.randn_like(y)
        y.backward(g.to(dt))
        y, gx = y.to(x.dtype), xi.grad.to(x.dtype)
        gv = (vi.grad if vi.grad is not None else torch.zeros_like(vi)).to(x.dtype)
        if packed.tap_mask is not None and name == "ref":
            gv = gv * packed.tap_mask  # the kernel-granular op trains only the mask's taps
        out[name] = (y.detach(), gx, gv, bi.grad.to(x.dtype) if bi is not None else None)
    return out


@pytest.mark.parametrize("geom,shape,sparsity,fused,fmt,seed", _cases())
def test_sparse_conv2d_matches_reference(geom, shape, sparsity, fused, fmt, seed):
    k, stride, padding, mode = geom
    n, cin, cout, h, w = shape
    torch.manual_seed(seed)
    x = torch.randn(n, cin, h, w, device=DEVICE)
    weight = torch.randn(cout, cin, k, k, device=DEVICE) * 0.5
    mask = make_mask((cout, cin, k, k), sparsity, seed, kind="kernels" if fmt == "kernel" else "random").to(DEVICE)
    packed = pack_conv_weight(weight, mask, format=fmt)
    bias = torch.randn(cout, device=DEVICE) if fused else None
    slope = 0.2 if fused else None
    res = _run_both(x, packed, bias, stride, padding, mode, slope)
    (y, gx, gv, gb), (yr, gxr, gvr, gbr) = res["triton"], res["ref"]
    close(y, yr, "forward")
    close(gx, gxr, "grad input")
    assert gv.shape == (packed.nnz,), "weight grad must have exactly nnz entries"
    close(gv, gvr, "grad values")
    if fused:
        close(gb, gbr, "grad bias")


def test_relu_slope_zero_and_no_bias_activation():
    torch.manual_seed(3)
    x = torch.randn(1, 3, 8, 8, device=DEVICE)
    packed = pack_conv_weight(torch.randn(5, 3, 3, 3, device=DEVICE), make_mask((5, 3, 3, 3), 0.5, 3).to(DEVICE))
    for slope in (0.0, 0.2):
        res = _run_both(x, packed, None, 1, 1, "reflect", slope)
        for a, b, what in zip(res["triton"][:3], res["ref"][:3], ("y", "gx", "gv"), strict=True):
            close(a, b, f"slope={slope} {what}")


def test_weight_grad_only_at_nonzeros():
    from lipdeploy.kernels.sparse_conv import sparse_conv2d_weight_grad

    torch.manual_seed(4)
    x = torch.randn(1, 4, 9, 9, device=DEVICE)
    m = make_mask((6, 4, 3, 3), 0.9, 4).to(DEVICE)
    packed = pack_conv_weight(torch.randn(6, 4, 3, 3, device=DEVICE), m)
    gy = torch.randn(1, 6, 9, 9, device=DEVICE)
    gv = sparse_conv2d_weight_grad(gy, x, packed, 1, 1, "reflect")
    assert gv.shape == (int(m.sum()),)
    # equals the dense weight gradient gathered at the mask's positions
    wd = packed.to_dense().requires_grad_(True)
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    torch.nn.functional.conv2d(xp, wd).backward(gy)
    close(gv, wd.grad.flatten()[packed.flat_positions()], "wgrad vs dense gather")


def test_wgrad_atomic_config_matches():
    from lipdeploy.kernels.sparse_conv import KernelConfig, sparse_conv2d_weight_grad

    torch.manual_seed(5)
    x = torch.randn(2, 3, 11, 9, device=DEVICE)
    packed = pack_conv_weight(torch.randn(5, 3, 3, 3, device=DEVICE), make_mask((5, 3, 3, 3), 0.5, 5).to(DEVICE))
    gy = torch.randn(2, 5, 6, 5, device=DEVICE)
    a = sparse_conv2d_weight_grad(gy, x, packed, 2, 1, "zeros", KernelConfig(32, 32, 32, 1, wgrad_atomic=True))
    b = sparse_conv2d_weight_grad(gy, x, packed, 2, 1, "zeros", KernelConfig(64, 64, 64, 1, wgrad_atomic=False))
    close(a, b, "atomic vs partial sums")


# ---------------------------------------------------------------------------------------------------------------------
# module
# ---------------------------------------------------------------------------------------------------------------------


def test_module_triton_vs_torch_and_training_step():
    torch.manual_seed(6)
    w = torch.randn(6, 4, 3, 3)
    m = make_mask(w.shape, 0.8, 6)
    b = torch.randn(6)
    mods = {
        be: SparseConv2d.from_dense(
            w, m, b, stride=1, padding=1, padding_mode="reflect", implementation=be, activation_slope=0.2
        ).to(DEVICE)
        for be in ("triton", "torch")
    }
    assert set(n for n, _ in mods["triton"].named_parameters()) == {"values", "bias"}
    assert mods["triton"].values.numel() == int(m.sum())
    assert torch.equal(mods["triton"].dense_weight().detach().cpu(), w * m)
    assert torch.equal(mods["triton"].mask().cpu(), m)
    x = torch.randn(1, 4, 8, 8, device=DEVICE)
    outs = {}
    for be, mod in mods.items():
        opt = torch.optim.Adam(mod.parameters(), lr=0.01)
        for _ in range(2):
            opt.zero_grad()
            loss = mod(x).square().mean()
            loss.backward()
            opt.step()
        outs[be] = (mod(x).detach(), mod.values.detach().clone(), mod.bias.detach().clone())
    for a, c, what in zip(outs["triton"], outs["torch"], ("y", "values", "bias"), strict=True):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4, msg=lambda s, what=what: f"{what}: {s}")
    dw = mods["triton"].dense_weight().detach().cpu()
    assert torch.equal(dw != 0, m != 0) or bool(((dw != 0) <= (m != 0)).all()), "weights appeared off the mask"


def test_module_state_dict_and_formats():
    torch.manual_seed(7)
    w = torch.randn(5, 3, 3, 3)
    m = make_mask(w.shape, 0.6, 7, kind="kernels")
    for fmt in ("csr", "kernel"):
        a = SparseConv2d.from_dense(w, m, None, 2, 1, "zeros", implementation="torch", format=fmt)
        b = SparseConv2d.from_dense(torch.zeros_like(w), m, None, 2, 1, "zeros", implementation="torch", format=fmt)
        b.load_state_dict(a.state_dict())
        assert torch.equal(b.dense_weight(), w * m)
        assert "row_ptr" in a.state_dict() and "values" in a.state_dict()
        assert "SparseConv2d" not in repr(a) or "nnz=" in repr(a)
    with pytest.raises(ValueError):
        SparseConv2d.from_dense(w, m, implementation="cudnn")


def test_choose_fastest_cpu_is_the_baseline():
    if torch.cuda.is_available():
        pytest.skip("CPU behaviour only")
    assert choose_fastest("x", {"dense": lambda: None, "sparse": lambda: None}) == "dense"


def test_import_without_triton(tmp_path):
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, lipdeploy.kernels as K\n"
        "assert not K.triton_available()\n"
        "w = torch.randn(4, 3, 3, 3)\n"
        "m = K.SparseConv2d.from_dense(w, None, None, 1, 1, 'reflect', implementation='torch')\n"
        "assert m(torch.randn(1, 3, 8, 8)).shape == (1, 4, 8, 8)\n"
        "try:\n"
        "    K.SparseConv2d.from_dense(w, None, implementation='triton')\n"
        "except ImportError as e:\n"
        "    assert 'triton' in str(e); print('OK')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


def test_triton_on_cpu_without_interpreter_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CPU behaviour only")
    code = (
        "import os; os.environ.pop('TRITON_INTERPRET', None)\n"
        "import torch, lipdeploy.kernels as K\n"
        "p = K.pack_conv_weight(torch.randn(4, 3, 3, 3))\n"
        "try:\n"
        "    K.sparse_conv2d(torch.randn(1, 3, 8, 8), p)\n"
        "except RuntimeError as e:\n"
        "    assert 'TRITON_INTERPRET' in str(e); print('OK')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


# ---------------------------------------------------------------------------------------------------------------------
# CUDA only: realistic sizes
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("geom", [(3, 1, 1, "reflect"), (3, 2, 1, "reflect"), (1, 1, 0, "zeros")])
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
@pytest.mark.parametrize("fmt", ["csr", "kernel"])
def test_cuda_layer_sizes(geom, sparsity, fmt):
    k, stride, padding, mode = geom
    torch.manual_seed(8)
    x = torch.randn(1, 128, 64, 64, device="cuda")
    weight = torch.randn(128, 128, k, k, device="cuda") * 0.05
    mask = make_mask(weight.shape, sparsity, 8, kind="kernels" if fmt == "kernel" else "random").cuda()
    packed = pack_conv_weight(weight, mask, format=fmt)
    bias = torch.randn(128, device="cuda")
    # float64 reference: on an H100 (2026-11-27) every stride-1 3x3 case failed against a float32 cuDNN reference
    # with TF32 off, while stride 2 and 1x1 passed, and the interpreter matches the reference to 1e-6 on the same
    # geometry; cuDNN's Winograd / FFT algorithms (only used at stride 1) are the likely cause (not yet confirmed)
    res = _run_both(x, packed, bias, stride, padding, mode, 0.2, ref_dtype=torch.float64)
    for a, b, what in zip(res["triton"], res["ref"], ("y", "gx", "gv", "gb"), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3, msg=lambda s, what=what: f"{what}: {s}")


def test_choose_fastest_margin_cache_and_invalidation(tmp_path, monkeypatch):
    from lipdeploy.kernels import cache_path, choose_fastest

    monkeypatch.setenv("LIPDEPLOY_CACHE", str(tmp_path))
    costs = {"dense": 1.0, "a": 0.9, "b": 0.7}
    timed: list[str] = []

    def candidates(**over):
        c = {**costs, **over}
        return {name: (lambda name=name, ms=ms: (timed.append(name), ms)[1]) for name, ms in c.items()}

    timer = lambda fn: fn()  # noqa: E731 - the candidates return their own price
    assert choose_fastest("L1", candidates(), timer=timer) == "b"
    assert sorted(timed) == ["a", "b", "dense"]
    entry = next(iter(__import__("json").loads(cache_path().read_text()).values()))
    assert entry["ms"] == costs and entry["choice"] == "b"
    timed.clear()
    assert choose_fastest("L1", candidates(), timer=timer) == "b" and not timed  # cached: nothing re-timed
    # the cached winner is gone from the candidates: everything is timed again
    assert choose_fastest("L1", {k: v for k, v in candidates().items() if k != "b"}, timer=timer) == "a"
    assert sorted(timed) == ["a", "dense"]
    # inside the margin the baseline stays
    assert choose_fastest("L2", candidates(a=0.97, b=0.99), timer=timer) == "dense"
    assert choose_fastest("L3", candidates(a=0.97, b=0.99), margin=1.0, timer=timer) == "a"
    with pytest.raises(ValueError, match="baseline"):
        choose_fastest("L4", {"a": lambda: 1.0}, timer=timer)
    if not torch.cuda.is_available():  # no GPU and no timer: nothing is timed, the baseline is kept
        timed.clear()
        assert choose_fastest("L5", candidates(), timer=None) == "dense" and not timed


def _gpu_configs():
    from lipdeploy.kernels.sparse_conv import candidate_configs, config_grid

    cuda = torch.device("cuda")
    cfgs = [c for px in (1024, 4096, 1 << 16) for c in candidate_configs(px, cuda)] + config_grid(cuda)
    return list(dict.fromkeys(cfgs))


@pytest.mark.parametrize("cfg", _gpu_configs(), ids=lambda c: c.tag)
def test_every_gpu_config_matches_reference(cfg):
    """The tile shapes the GPU defaults, the dispatcher and the --tune sweep use (run here through the interpreter):
    tiles larger than the image, tail tiles, short nonzero segments, both strides and both paddings."""
    from lipdeploy.kernels import sparse_conv as S

    torch.manual_seed(5)
    x = torch.randn(1, 5, 13, 11, device=DEVICE)
    for k, stride, padding, mode, fmt in ((3, 2, 1, "reflect", "csr"), (3, 1, 1, "zeros", "kernel")):
        w = torch.randn(6, 5, k, k, device=DEVICE)
        m = make_mask(w.shape, 0.7, 3, kind="kernels" if fmt == "kernel" else "random").to(DEVICE)
        packed = pack_conv_weight(w, m, format=fmt)
        b = torch.randn(6, device=DEVICE)
        out = {}
        for name in ("triton", "ref"):
            xi = x.clone().requires_grad_(True)
            vi = packed.values.detach().clone().requires_grad_(True)
            args = (xi, packed.with_values(vi), b, stride, padding, mode, 0.2)
            y = S.sparse_conv2d(*args, config=cfg) if name == "triton" else sparse_conv2d_reference(*args)
            y.backward(torch.ones_like(y))
            gv = vi.grad * packed.tap_mask if packed.tap_mask is not None else vi.grad
            out[name] = (y.detach(), xi.grad, gv)
        for what, a, r in zip(("forward", "grad input", "grad values"), out["triton"], out["ref"], strict=True):
            close(a, r, f"{cfg.tag} {what}")
