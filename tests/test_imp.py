"""IMP: densities 0.8^k at every granularity, structure of kernel/channel tickets, random baseline, resume, rewind."""

from __future__ import annotations

import pytest
import torch

from lipdeploy.errors import InputError
from lipdeploy.fit import FitConfig
from lipdeploy.images import standard_image
from lipdeploy.imp import ImpConfig, existing_rounds, find_ticket, prune
from lipdeploy.masks import Mask, density
from lipdeploy.tasks import Denoise, Inpaint
from lipdeploy.testing import tiny_skip
from lipdeploy.ticket import load_ticket, ticket_from_model


def dense_ticket(seed=0):
    spec = tiny_skip()
    torch.manual_seed(seed)
    model = spec.build()
    return ticket_from_model(model, spec, Mask.ones_like(model))


def weights_of(ticket):
    return {n: ticket.init[n] for n in ticket.masks}


@pytest.fixture(scope="module")
def clean() -> torch.Tensor:
    return standard_image("coffee")[:, :, 100:132, 200:232].contiguous()


def test_global_unstructured_density_and_magnitude_order():
    t = dense_ticket()
    w = weights_of(t)
    masks = t.masks
    total = sum(m.numel() for m in masks.values())
    for k in range(1, 6):
        masks = prune(w, masks, 0.2)
        assert abs(density(masks) - 0.8**k) <= 1.5 * k / total + 1e-9
    # global L1: every pruned weight is no larger than every kept one
    pruned = torch.cat([w[n][m == 0].abs() for n, m in masks.items()])
    kept = torch.cat([w[n][m == 1].abs() for n, m in masks.items()])
    assert float(pruned.max()) <= float(kept.min())
    # global pruning is uneven across layers; layer-wise keeps every layer at 0.8
    layer = prune(w, t.masks, 0.2, scope="layer")
    for n, m in layer.items():
        assert abs(float(m.mean()) - 0.8) < 0.5 / m.numel() + 1e-6 or m.numel() < 10, n


def test_kernel_and_channel_granularity_prune_whole_units():
    t = dense_ticket()
    w = weights_of(t)
    last = list(t.masks)[-1]
    for gran, tol in (("kernel", 0.01), ("channel", 0.03)):
        masks = t.masks
        for k in range(1, 4):
            masks = prune(w, masks, 0.2, granularity=gran)
            assert abs(density(masks) - 0.8**k) < tol, (gran, k)
        for name, m in masks.items():
            o, i = m.shape[:2]
            if gran == "kernel" or name == last:  # the output conv is never pruned by channel (colours)
                units = m.reshape(o * i, -1)
            else:
                units = m.reshape(o, -1)
            assert bool(((units == 0).all(1) | (units == 1).all(1)).all()), (gran, name)
            assert m.sum() > 0  # every layer keeps at least one unit
        if gran == "channel":
            assert any(bool((m.reshape(m.shape[0], -1) == 0).all(1).any()) for m in masks.values())


def test_random_baseline_matches_densities_but_not_masks():
    t = dense_ticket()
    w = weights_of(t)
    mag, rnd = t.masks, t.masks
    for k in range(3):
        mag = prune(w, mag, 0.2)
        rnd = prune(w, rnd, 0.2, random=True, generator=torch.Generator().manual_seed(k))
        assert density(rnd) == density(mag)
    overlap = sum(int((mag[n] * rnd[n]).sum()) for n in mag) / sum(int(mag[n].sum()) for n in mag)
    assert overlap < 0.75  # random keeps ~0.512 of the magnitude survivors, not all of them


def test_find_writes_rounds_with_provenance_and_resumes(tmp_path, clean):
    start = dense_ticket()
    out = tmp_path / "imp"
    cfg = FitConfig(iters=3)
    seen: list[int] = []
    paths = find_ticket(
        start,
        clean,
        Denoise(),
        out,
        ImpConfig(rounds=2),
        cfg,
        image_name="coffee",
        on_round=lambda r, p, res: seen.append(r),
    )
    assert seen == [0, 1, 2] and [p.name for p in paths] == ["round_00.pt", "round_01.pt", "round_02.pt"]
    tickets = [load_ticket(p) for p in paths]
    for k, t in enumerate(tickets):
        assert t.density == pytest.approx(0.8**k, abs=1e-3)
        prov = t.provenance
        assert prov["round"] == k and prov["task"] == "denoise" and prov["image"] == "coffee"
        assert prov["rate"] == 0.2 and prov["granularity"] == "unstructured" and prov["scope"] == "global"
        assert prov["iters"] == 3 and prov["rewind_iter"] == 0 and "lipdeploy_version" in prov and "date" in prov
        assert prov["settings"]["target"] == "clean"  # the paper's IMP target for denoising
        assert isinstance(prov["psnr_best"], float)
        assert t.fitted is not None
        for name, v in start.init.items():  # rewind to the original initialisation (stored at kept positions)
            assert torch.equal(t.init[name], v * t.masks[name] if name in t.masks else v)
    mtimes = {p.name: p.stat().st_mtime_ns for p in paths}
    seen.clear()
    paths = find_ticket(
        start,
        clean,
        Denoise(),
        out,
        ImpConfig(rounds=3),
        cfg,
        image_name="coffee",
        on_round=lambda r, p, res: seen.append(r),
    )
    assert seen == [3]
    assert len(paths) == 4 and load_ticket(paths[3]).density == pytest.approx(0.8**3, abs=1e-3)
    assert all(p.stat().st_mtime_ns == mtimes[p.name] for p in paths[:3])
    assert (out / "imp.json").exists()
    with pytest.raises(InputError, match="different settings"):
        find_ticket(start, clean, Denoise(), out, ImpConfig(rounds=4, rate=0.3), cfg, image_name="coffee")


def test_find_random_baseline_and_rewind(tmp_path, clean):
    start = dense_ticket()
    cfg = FitConfig(iters=4)
    mag = find_ticket(start, clean, Inpaint(), tmp_path / "mag", ImpConfig(rounds=1, rewind_iter=2), cfg)
    rnd = find_ticket(start, clean, Inpaint(), tmp_path / "rnd", ImpConfig(rounds=1, random=True), cfg)
    t_mag, t_rnd = load_ticket(mag[1]), load_ticket(rnd[1])
    assert t_mag.density == t_rnd.density
    assert any(not torch.equal(t_mag.masks[n], t_rnd.masks[n]) for n in t_mag.masks)
    assert t_rnd.provenance["pruning"] == "random"
    # rewind: round 1 starts from the dense fit's weights at iteration 2, not from the initialisation
    assert "iteration 2" in t_mag.provenance["init"]
    assert (tmp_path / "mag" / "rewind_iter_2.pt").exists()
    name = "1.1.1.1.weight"
    assert not torch.equal(t_mag.init[name], start.init[name] * t_mag.masks[name])
    assert torch.equal(load_ticket(mag[0]).init[name], start.init[name])
    assert t_mag.provenance["settings"]["target"] == "observation"  # inpainting fits the masked image
    assert sorted(existing_rounds(tmp_path / "mag")) == [0, 1]
