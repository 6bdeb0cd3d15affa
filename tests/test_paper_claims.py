"""The claims table of a multi-task preset (issues 16, 25): verdicts read the 95% interval of the paired
differences (by image and seed)."""

from __future__ import annotations

from lipdeploy.bench.paper_claims import claim_rows, claims_markdown

SEEDS = (0, 1, 2)


def _units(per_image: dict[str, float], jitter: tuple[float, ...] = (0.0, 0.0, 0.0)) -> dict[tuple[str, int], float]:
    """Per (image, seed) PSNRs: the image's value plus a per-seed offset."""
    return {(img, s): v + jitter[s] for img, v in per_image.items() for s in SEEDS}


def _tq(lip89, random956, transfer=None, lip_jitter=(0.0, 0.0, 0.0)):
    ms = {
        "dense": {"family": "dense", "sparsity": 0.0, "psnr": _units({"a": 30.0, "b": 28.0})},
        "lip-unstructured-89": {"family": "lip", "sparsity": 0.893, "psnr": _units(lip89, lip_jitter)},
        "lip-unstructured-95.6": {"family": "lip", "sparsity": 0.956, "psnr": _units({"a": 29.0, "b": 27.0})},
        "random-95.6": {"family": "random", "sparsity": 0.956, "psnr": _units(random956, (0.1, -0.1, 0.0))},
        "dd-matched-89": {"family": "dd-matched", "sparsity": 0.893, "psnr": _units({"a": 29.0, "b": 27.5})},
    }
    if transfer is not None:
        ms["transfer-89-from-b"] = {"family": "transfer", "sparsity": 0.893, "psnr": _units(transfer, (0.1, 0, -0.1))}
    return {"denoise": ms}


def _verdicts(tq) -> dict[str, str]:
    return {row[0]: row[4] for row in claim_rows(tq)}


def test_verdicts_read_the_interval():
    # LIP 89 - dense: -0.2 / -0.1 dB with a +-0.05 seed jitter: the interval lies above -0.5 -> holds
    v = _verdicts(_tq({"a": 29.8, "b": 27.9}, {"a": 27.5, "b": 25.9}, {"a": 29.7}, lip_jitter=(0.05, -0.05, 0.0)))
    assert v["LIP within 0.5 dB of dense up to 89%"] == "holds"
    assert v["LIP >= 1 dB above random pruning at >= 95%"] == "holds"  # +1.5 / +1.1 dB, tight
    assert v["LIP beats the deep decoder of equal size"] == "holds"
    assert v["a ticket found on another image within 0.5 dB of the image's own"] == "holds"
    assert v["LIP at the most extreme sparsity vs dense"] == "reported (no threshold)"

    # LIP 89 - dense: -0.7 / 0.0 dB: mean -0.35, the interval straddles -0.5 -> within noise (the old rule: mixed)
    v = _verdicts(_tq({"a": 29.3, "b": 28.0}, {"a": 28.5, "b": 26.5}, {"a": 28.0}))
    assert v["LIP within 0.5 dB of dense up to 89%"] == "within noise"
    assert v["LIP >= 1 dB above random pruning at >= 95%"] == "does not hold"  # +0.5 dB on both images
    assert v["a ticket found on another image within 0.5 dB of the image's own"] == "does not hold"  # -1.3 dB
    # both images 0.6-0.7 dB below dense -> does not hold; deep decoder +0.3 / -0.1 -> within noise
    v = _verdicts(_tq({"a": 29.3, "b": 27.4}, {"a": 27.5, "b": 25.9}))
    assert v["LIP within 0.5 dB of dense up to 89%"] == "does not hold"
    assert v["LIP beats the deep decoder of equal size"] == "within noise"


def test_too_few_pairs_give_no_verdict():
    tq = _tq({"a": 29.8, "b": 27.9}, {"a": 27.5, "b": 25.9})
    for e in tq["denoise"].values():  # one seed of two images: n = 2 pairs
        e["psnr"] = {u: v for u, v in e["psnr"].items() if u[1] == 0}
    v = _verdicts(tq)
    assert v["LIP within 0.5 dB of dense up to 89%"] == "n too small"
    md = claims_markdown(tq, "preset `t`")
    assert "89: -0.15 (n=2)" in md and "2 image(s) x 1 seed(s); n too small" in md


def test_unmeasured_claims_and_missing_transfers():
    tq = _tq({"a": 29.8}, {})
    del tq["denoise"]["dense"]
    v = _verdicts(tq)
    assert v["LIP within 0.5 dB of dense up to 89%"] == "not measured yet"
    assert v["LIP >= 1 dB above random pruning at >= 95%"] == "not measured yet"
    assert not any(k.startswith("a ticket found") for k in v)  # no transfer rows: no transfer claims
    assert claims_markdown({}, "x") == ""
    md = claims_markdown(_tq({"a": 29.8, "b": 27.9}, {"a": 27.5, "b": 25.9}), "preset `t`")
    assert "baby: 74.0% +0.06 vs dense" in md  # the paper's figure beside the measured gap
    assert "89: -0.15 [" in md and "(n=6)" in md and "2 image(s) x 3 seed(s); t" in md


def test_a_claim_that_holds_at_some_sparsities_says_where():
    tq = _tq({"a": 29.8, "b": 27.9}, {"a": 27.5, "b": 25.9})
    ms = tq["denoise"]
    ms["dd-matched-95.6"] = {"family": "dd-matched", "sparsity": 0.956, "psnr": _units({"a": 30.0, "b": 28.0})}
    v = _verdicts(tq)
    assert v["LIP beats the deep decoder of equal size"] == "holds at 89; does not hold at 95.6"
