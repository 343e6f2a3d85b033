"""Synthetic characters (issue 36, article section 4.1): a batch that shows one person becomes
triplets through the movies' stages, one that shows two is dropped with its similarity; the
`synthetic` group drawn by `cameo synthetic build` (the tiny generator's random weights draw
no faces: wiring only), kept while its fingerprint holds, taken in by the dataset."""

from __future__ import annotations

import json

import dagster as dg
import matplotlib.cbook
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from skimage import data

from assets.synthetic import batch_triplets, collect_synthetic, write_batch_triplets
from bench.report import PARAMS
from core.layout import DataLayout
from orchestration.cli.main import main
from orchestration.params import load_params
from orchestration.synthetic_assets import one_person_check


@pytest.fixture(scope="module")
def params():
    return load_params(PARAMS, "tiny")


def grace_hopper() -> np.ndarray:
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


def test_a_batch_of_one_person_makes_triplets_and_one_of_two_is_dropped(params, tmp_path):
    priors = params.priors(None)
    hopper = grace_hopper()
    one_person = [
        hopper,
        np.ascontiguousarray(hopper[:, ::-1]),
        np.ascontiguousarray(hopper[40:, 20:]),
    ]
    threshold = params.synthetic.min_identity_similarity
    triplets, skipped = batch_triplets(
        "synthetic-0-00000", one_person, "photo", priors, params, threshold
    )
    assert [t.triplet_id for t in triplets] == ["synthetic-0-00000-t01", "synthetic-0-00000-t02"]
    assert not skipped
    for t in triplets:
        assert t.source == "synthetic" and t.movie == "synthetic-0-00000"
        assert (t.reference_frame, t.style) == (0, "photo") and t.target_frame in (1, 2)
        assert t.identity_similarity >= threshold and t.prompt
        assert t.images["target_mask.png"].shape == t.images["target.png"].shape
    astronaut = data.astronaut()[:400, 60:460]
    dropped, why = batch_triplets(
        "synthetic-0-00001", [hopper, astronaut], "photo", priors, params, threshold
    )
    assert dropped == [] and [s["stage"] for s in why] == ["identity"]
    assert why[0]["identity_similarity"] < threshold
    assert "more than one person" in why[0]["reason"]
    assert "synthetic.min_identity_similarity" in why[0]["reason"]
    blank = np.full_like(hopper, 255)
    none, no_face = batch_triplets(
        "synthetic-0-00002", [blank, hopper], "photo", priors, params, threshold
    )
    assert none == [] and no_face[0]["stage"] == "faces"
    assert "reference image" in no_face[0]["reason"]

    # The check the UI shows: passed, a warning for two people, a warning (not a pass) unchecked.
    checks = [one_person_check(*case, threshold) for case in ((triplets, []), (dropped, why))]
    checks.append(one_person_check(none, no_face, threshold))
    assert [c.passed for c in checks] == [True, False, False]
    assert {c.severity for c in checks[1:]} == {dg.AssetCheckSeverity.WARN}
    assert "more than one person" in checks[1].description
    assert checks[2].description.startswith("not checked")

    # Written per batch, then taken into the dataset's folder with the batch's skip records;
    # a described character whose stages have not run is listed as left out.
    layout = DataLayout(tmp_path / "data")
    layout.synthetic_dir.mkdir(parents=True)
    ids = ["synthetic-0-00000", "synthetic-0-00001", "synthetic-0-00003"]
    layout.synthetic_descriptions.write_text(
        json.dumps({"characters": [{"character_id": i} for i in ids]})
    )
    write_batch_triplets(triplets, [], layout.synthetic_batch(ids[0]))
    write_batch_triplets(dropped, why, layout.synthetic_batch(ids[1]))
    out = tmp_path / "triplets"
    out.mkdir()
    rows, left_out = collect_synthetic(layout, out)
    assert [r["triplet_id"] for r in rows] == [t.triplet_id for t in triplets]
    assert all((out / r["target_mask"]).is_file() for r in rows)
    assert [(s["movie"], s["stage"]) for s in left_out] == [
        ("synthetic-0-00001", "identity"),
        ("synthetic-0-00003", "synthetic"),
    ]


def test_cameo_synthetic_build_draws_keeps_and_forgets_batches(tmp_path):
    """Two characters drawn by the tiny generator (random weights: no face, so no triplet, and
    the reason); a second build draws nothing again; fewer characters remove the rest; the
    method's params are refused where they break the batch."""
    data_dir = tmp_path / "data"
    params_file = tmp_path / "params.yaml"
    text = PARAMS.read_text()

    def build(count: int, anchors: int = 2) -> str:
        params_file.write_text(
            text.replace("\n  count: 0 ", f"\n  count: {count} ").replace(
                "\n    anchors: 2 ", f"\n    anchors: {anchors} "
            )
        )
        result = CliRunner().invoke(
            main, ["synthetic", "build", "--data", str(data_dir), "--params", str(params_file)]
        )
        return result.output + (str(result.exception) if result.exit_code else "")

    output = build(2)
    layout = DataLayout(data_dir)
    ids = layout.synthetic_characters()
    assert ids == ["synthetic-0-00000", "synthetic-0-00001"], output
    assert "ok     synthetic-0-00000: 0 triplets" in output
    assert "warning: check synthetic_triplets.one_person_in_the_batch: not checked" in output
    assert "no face found" in output
    batch = layout.synthetic_batch(ids[0])
    images = sorted(batch.glob("image-*.png"))
    assert len(images) == 3 and Image.open(images[0]).size == (64, 64)
    prompts = json.loads((batch / "batch.json").read_text())["prompts"]
    assert len(set(prompts)) == 3 and all("woman" in p or "man" in p for p in prompts)
    skipped = pd.read_parquet(batch / "triplets" / "skipped.parquet")
    assert list(skipped["stage"]) == ["faces"]
    drawn_at = images[0].stat().st_mtime_ns
    build(2)
    assert images[0].stat().st_mtime_ns == drawn_at  # its fingerprint held: not drawn again
    build(1)
    assert layout.synthetic_characters() == ids[:1]
    assert not layout.synthetic_batch(ids[1]).exists()
    assert "synthetic.count is 0" in build(0) and layout.synthetic_characters() == []
    refused = build(1, anchors=4)  # the tiny profile draws 3
    assert "consistency.anchors (4) > batch_size (3)" in refused


def test_the_gpu_cost_bench_draws_both_settings_in_its_smoke_run(tmp_path):
    """bench/synthetic_gpu.py (the GPU window's `synthetic` part) on the tiny profile's batch on
    the CPU: both settings timed, the section written under --out; a forced failure costs only
    its own row."""
    from bench.synthetic_gpu import main

    main(["--smoke", "--out", str(tmp_path)])
    section = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| independent (method off) | " in section and "| ConsiStory | " in section
    assert "pending" not in section and "ConsiStory draws a batch in" in section
    assert len((tmp_path / "synthetic_figures.txt").read_text().splitlines()) == 2
    main(["--smoke", "--out", str(tmp_path / "failed"), "--fail-part", "ConsiStory"])
    failed = (tmp_path / "failed" / "BENCHMARKS.md").read_text()
    assert "| ConsiStory | pending |" in failed and "Not run: ConsiStory: RuntimeError" in failed


def test_the_consistency_bench_runs_at_a_tiny_size(params):
    """bench/synthetic.py's code on one tiny character, so that the benchmark cannot rot: both
    settings drawn, checked and reported; the tiny generator's images hold no face, and the
    report says its figures are wiring and what is pending."""
    from bench.synthetic import measure, report

    settings = measure(params, 1)
    assert [(s.batches, s.images, s.faces, s.kept) for s in settings] == [(1, 3, 0, 0)] * 2
    assert all(s.draw_s > 0 for s in settings)
    text = report(params, settings)
    assert "| ConsiStory | 0 of 3 | - | - | 0 of 1 | 0 |" in text
    assert "Pending: the consistency and GPU cost of the `full` profile" in text
