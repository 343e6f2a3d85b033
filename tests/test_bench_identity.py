"""`bench/identity.py`'s detector comparison on a few frames of the sample movie, so that the
benchmark cannot rot; no timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

from bench.identity import (
    bench_calibration,
    bench_detector,
    bench_foreign_boxes,
    decode,
    true_faces,
)
from core.layout import DataLayout
from orchestration.params import load_params
from perception.priors import Priors
from tests.conftest import PARAMS


def test_the_detector_comparison_counts_against_the_ground_truth(sample_root: Path):
    layout = DataLayout(sample_root)
    truth = json.loads(layout.ground_truth("sample").read_text())
    params = load_params(PARAMS, "tiny").faces
    dlib = Priors("tiny", faces=params).dlib_faces()
    # Five frames of five shots: one with no one, one with two people, three with one.
    frames = decode(layout.movies_dir / "sample.mp4", 400)
    faces = true_faces(truth, dlib)
    report = bench_detector(frames, faces, params.min_face_px)
    expected = sum(len(faces[i]) for i in frames)
    assert f"({len(frames)} frames of 640x360, {expected} faces in the ground truth)" in report
    rows = [line for line in report.splitlines() if line.startswith("| ") and "---" not in line]
    ours, peer = (line.strip("|").split("|") for line in rows[1:])
    assert "the tiny profile's" in ours[0] and "the peer" in peer[0]
    real, _, missed = (int(cell) for cell in ours[1:4])
    assert real + missed == expected and real >= expected - 1
    assert "OpenCV's cascade takes x" in report


def test_the_calibration_at_hand_says_how_few_faces_it_stands_on():
    params = load_params(PARAMS, "tiny").faces
    report = bench_calibration(Priors("tiny", faces=params).dlib_faces(), 0.91)
    assert "0 same-person pairs and 36 different-people pairs" in report
    assert "FNMR cannot be measured" in report and "the smallest FMR this can measure" in report


def test_the_foreign_box_shift_is_measured_on_faces_both_detectors_find(sample_root: Path):
    layout = DataLayout(sample_root)
    truth = json.loads(layout.ground_truth("sample").read_text())
    dlib = Priors("tiny", faces=load_params(PARAMS, "tiny").faces).dlib_faces()
    frames = decode(layout.movies_dir / "sample.mp4", 400)
    report = bench_foreign_boxes(frames, true_faces(truth, dlib), dlib)
    shift = next(line for line in report.splitlines() if line.startswith("| the same face"))
    n, median = shift.strip("|").split("|")[1:3]
    assert int(n) >= 3 and 0 < float(median) < 0.5  # a shift, smaller than between people
    assert "of the median gap between two people" in report
