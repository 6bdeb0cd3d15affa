"""The claims table of a multi-task preset (issue 16): verdicts follow the paired per-image numbers."""

from __future__ import annotations

from lipdeploy.bench.paper_claims import claim_rows, claims_markdown


def _tq(lip89: dict[str, float], random956: dict[str, float], transfer: dict[str, float] | None = None):
    ms = {
        "dense": {"family": "dense", "sparsity": 0.0, "psnr": {"a": 30.0, "b": 28.0}},
        "lip-unstructured-89": {"family": "lip", "sparsity": 0.893, "psnr": lip89},
        "lip-unstructured-95.6": {"family": "lip", "sparsity": 0.956, "psnr": {"a": 29.0, "b": 27.0}},
        "random-95.6": {"family": "random", "sparsity": 0.956, "psnr": random956},
        "dd-matched-89": {"family": "dd-matched", "sparsity": 0.893, "psnr": {"a": 29.0, "b": 27.5}},
    }
    if transfer is not None:
        ms["transfer-89-from-b"] = {"family": "transfer", "sparsity": 0.893, "psnr": transfer}
    return {"denoise": ms}


def _verdicts(tq) -> dict[str, str]:
    return {row[0]: row[4] for row in claim_rows(tq)}


def test_verdicts_follow_every_image():
    v = _verdicts(_tq({"a": 29.8, "b": 27.9}, {"a": 27.5, "b": 25.9}, {"a": 29.5}))
    assert v["LIP within 0.5 dB of dense up to 89%"] == "holds"
    assert v["LIP >= 1 dB above random pruning at >= 95%"] == "holds"
    assert v["LIP beats the deep decoder of equal size"] == "holds"
    assert v["a ticket found on another image within 0.5 dB of the image's own"] == "holds"
    assert v["LIP at the most extreme sparsity vs dense"] == "reported (no threshold)"

    # near dense: one image 0.7 dB below, the mean 0.35 dB below -> mixed; deep decoder: +0.3 / +0.5 -> holds
    v = _verdicts(_tq({"a": 29.3, "b": 28.0}, {"a": 28.5, "b": 26.5}, {"a": 28.0}))
    assert v["LIP within 0.5 dB of dense up to 89%"] == "mixed (holds on the mean, not on every image)"
    assert v["LIP >= 1 dB above random pruning at >= 95%"] == "does not hold"
    assert v["LIP beats the deep decoder of equal size"] == "holds"
    assert v["a ticket found on another image within 0.5 dB of the image's own"] == "does not hold"
    # both images 0.6-0.7 dB below dense -> does not hold; deep decoder +0.3 / -0.1 -> mixed
    v = _verdicts(_tq({"a": 29.3, "b": 27.4}, {"a": 27.5, "b": 25.9}))
    assert v["LIP within 0.5 dB of dense up to 89%"] == "does not hold"
    assert v["LIP beats the deep decoder of equal size"] == "mixed (holds on the mean, not on every image)"


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
    assert "89: -0.15 dB (2 image(s))" in md


def test_a_claim_that_holds_at_some_sparsities_says_where():
    tq = _tq({"a": 29.8, "b": 27.9}, {"a": 27.5, "b": 25.9})
    ms = tq["denoise"]
    ms["dd-matched-95.6"] = {"family": "dd-matched", "sparsity": 0.956, "psnr": {"a": 30.0, "b": 28.0}}
    v = _verdicts(tq)
    assert v["LIP beats the deep decoder of equal size"] == "holds at 89; does not hold at 95.6"
