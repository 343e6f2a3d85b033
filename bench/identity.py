"""Identity on the sample movie, measured against its ground truth (`python -m bench.identity`).

- dlib's HOG detector: the scores of real faces and of false hits, which `faces.dlib.det_thresh`
  separates;
- dlib's identity similarity between frames, same person against different people, on the
  boxes of dlib's own detector and of the tiny profile's cascade (the boxes the tiny faces
  stage writes, which the triplets stage describes): the histogram that justifies
  `triplets.min_identity_similarity`;
- character mining (the faces and characters stages' code) with each recogniser: grouping
  purity and recall against `data/ground_truth/sample.json`;
- `cameo identity calibrate`'s error rates on every labelled face photograph at hand;
- how far dlib's descriptor moves on a foreign box (the cascade's) against its own;
- the tiny profile's face detector (OpenCV's Haar cascade) against the one a user would pick
  instead, scikit-image's LBP frontal-face cascade: faces found, false hits, time per frame,
  the two alternating frame by frame in one run.

    python -m bench.identity                  # every part (about 5 minutes on 2 cores)
    python -m bench.identity --part detector  # the detector comparison alone
    python -m bench.identity --part calibration  # `cameo identity calibrate` on the faces at hand
    python -m bench.identity --part boxes     # dlib's descriptor on the cascade's boxes

A face is real when its box overlaps the ground-truth face of a person in the frame (the
portrait's face, found once in the still photograph, where it is unambiguous, and carried
into the frame with the portrait) at IoU >= 0.3.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from assets.characters import build_characters
from assets.faces import detect_faces
from assets.frames import extract_frames
from assets.params import CharactersParams
from assets.sample_movie import (
    PEOPLE,
    _portrait,
    compare_with_truth,
    identity_at,
    write_sample_movie,
)
from bench.report import PARAMS, write_section
from core.layout import DataLayout
from orchestration.params import load_params
from perception.faces import DlibFaceAnalyzer, FaceAnalyzer, TinyFaceAnalyzer, face_angle
from perception.priors import Priors

STRIDE = 10  # every 10th frame: 185 frames, more pairs than the pipeline's stride 50 gives
DETECTOR_SECTION = "Tiny face detector: OpenCV's Haar cascade vs scikit-image's LBP cascade"
BINS = np.round(np.arange(0.80, 1.0001, 0.01), 2)  # below 0.80: the first row


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = np.maximum(a[:2], b[:2])
    x2, y2 = np.minimum(a[2:], b[2:])
    inter = max(x2 - x1, 0) * max(y2 - y1, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def true_faces(truth: dict, dlib: DlibFaceAnalyzer) -> dict[int, list[tuple[str, np.ndarray]]]:
    """Per frame, (identity, face box) of every person: the portrait's own face box, found
    by dlib in the still photograph (its top-scoring face), scaled into the portrait's box."""
    in_portrait = {}
    for identity in truth["identities"]:
        photo = _portrait(identity)
        face = max(dlib.detect(photo), key=lambda f: f.det_score)
        size = np.array([photo.shape[1], photo.shape[0]] * 2, np.float32)
        in_portrait[identity] = face.bbox / size
    faces = {}
    for frame in truth["frames"]:
        people = []
        for person in frame["people"]:
            x1, y1, x2, y2 = person["box"]
            scale = np.array([x2 - x1, y2 - y1] * 2, np.float32)
            people.append(
                (
                    person["identity"],
                    np.array([x1, y1] * 2) + in_portrait[person["identity"]] * scale,
                )
            )
        faces[frame["frame_idx"]] = people
    return faces


def label(box: np.ndarray, people: list[tuple[str, np.ndarray]]) -> str | None:
    """The identity whose face the box overlaps (IoU >= 0.3), else None: not a face."""
    best = max(people, key=lambda p: iou(box, p[1]), default=None)
    return best[0] if best is not None and iou(box, best[1]) >= 0.3 else None


def decode(video: Path, stride: int) -> dict[int, np.ndarray]:
    with av.open(str(video)) as container:
        return {
            i: frame.to_ndarray(format="rgb24")
            for i, frame in enumerate(container.decode(video=0))
            if i % stride == 0
        }


def similarities(found: list[tuple[int, str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of every pair of faces from different frames: same person, different people."""
    same, different = [], []
    for (fa, a, ea), (fb, b, eb) in itertools.combinations(found, 2):
        if fa != fb:
            (same if a == b else different).append(float(ea @ eb))
    return np.array(same), np.array(different)


def histogram(same: np.ndarray, different: np.ndarray, threshold: float) -> str:
    """Counts per 0.01 bin, as a Markdown table with bars scaled per column."""

    def counts(values: np.ndarray) -> np.ndarray:
        index = np.clip(np.floor((values - BINS[0]) / 0.01 + 1e-9).astype(int) + 1, 0, len(BINS))
        return np.bincount(index, minlength=len(BINS) + 1)[: len(BINS)]

    rows = ["| cosine | same person | | different people | |", "|---|---|---|---|---|"]
    cs, cd = counts(same), counts(different)
    for i, (s, d) in enumerate(zip(cs, cd, strict=True)):
        low = "< 0.80" if i == 0 else f"{BINS[i - 1]:.2f}"
        mark = " <- threshold" if i and BINS[i - 1] == threshold else ""
        bar_s = "#" * int(np.ceil(30 * s / max(cs.max(), 1)))
        bar_d = "#" * int(np.ceil(30 * d / max(cd.max(), 1)))
        rows.append(f"| {low}{mark} | {s} | `{bar_s}` | {d} | `{bar_d}` |")
    return "\n".join(rows)


def bench_detection(frames, faces, dlib) -> tuple[str, list]:
    """HOG scores of real faces and false hits (every hit above -0.5), and the real faces with
    their identity for the similarity part."""
    loose = DlibFaceAnalyzer(detector="hog", upsample=dlib.upsample, det_thresh=-0.5)
    real, false, found = [], [], []
    for index, image in frames.items():
        for face in loose.detect(image):
            who = label(face.bbox, faces[index])
            (real if who else false).append(face.det_score)
            if who and face.det_score >= dlib.det_thresh:
                found.append((index, who, face.embedding))
    expected = sum(len(faces[i]) for i in frames)
    missed = expected - sum(1 for s in real if s >= dlib.det_thresh)
    text = (
        f"dlib's HOG detector (upsample {dlib.upsample}) on every {STRIDE}th frame of the sample "
        f"movie ({len(frames)} frames, {expected} faces in the ground truth), every hit above "
        "-0.5:\n\n| hits | count | lowest score | highest score |\n|---|---|---|---|\n"
        f"| real faces | {len(real)} | {min(real):.3f} | {max(real):.3f} |\n"
        f"| false hits (no face there) | {len(false)} | {min(false, default=np.nan):.3f} | "
        f"{max(false, default=np.nan):.3f} |\n\n"
        f"`faces.dlib.det_thresh` = {dlib.det_thresh} lies between the two: at it, "
        f"{missed} of the {expected} ground-truth faces are missed and "
        f"{sum(1 for s in false if s >= dlib.det_thresh)} false hits kept.\n"
    )
    return text, found


def cascade_faces(frames, faces, dlib) -> list[tuple[int, str, np.ndarray]]:
    """dlib's descriptors of the tiny cascade's boxes that are real faces."""
    cascade = TinyFaceAnalyzer(min_face_px=24)
    found = []
    for index, image in frames.items():
        for face in cascade.detect(image):
            if who := label(face.bbox, faces[index]):
                found.append((index, who, dlib.describe(image, face.bbox)[0]))
    return found


BOXES_SECTION = "Identity: dlib's descriptor on a foreign box"


def bench_foreign_boxes(frames, faces, dlib) -> str:
    """How far dlib's descriptor moves when it describes the tiny cascade's box of a face
    instead of the box dlib's own detector gives the same face (IoU >= 0.5): the shift of
    describing a foreign box, against the spread of one person and the gap between people."""
    cascade = TinyFaceAnalyzer(min_face_px=24)
    shifts, unmatched, own = [], 0, []
    for index, image in frames.items():
        found = dlib.detect(image)
        for face in cascade.detect(image):
            who = label(face.bbox, faces[index])
            if who is None:
                continue
            match = max(found, key=lambda f: iou(f.bbox, face.bbox), default=None)
            if match is None or iou(match.bbox, face.bbox) < 0.5:
                unmatched += 1
                continue
            foreign = dlib.describe(image, face.bbox)[0]
            shifts.append(face_angle(foreign, match.embedding))
            own.append((index, who, match.embedding))
    shifts = np.array(shifts)
    same, different = similarities(own)
    same_angle = np.arccos(np.clip(same, -1, 1))
    different_angle = np.arccos(np.clip(different, -1, 1))
    rows = [
        ("the same face: the cascade's box against dlib's (the shift)", shifts),
        ("one person, two frames, dlib's boxes", same_angle),
        ("two people, dlib's boxes", different_angle),
    ]
    table = "\n".join(
        f"| {name} | {len(v)} | {np.median(v):.3f} | {np.percentile(v, 90):.3f} | {v.max():.3f} |"
        for name, v in rows
    )
    return (
        f"Every {STRIDE}th frame of the sample movie: each real face the tiny profile's cascade "
        "finds (the boxes the tiny faces stage writes and dlib then describes, "
        "`faces.recogniser: dlib`) that dlib's HOG detector also finds at IoU >= 0.5 "
        f"({len(shifts)} faces; {unmatched} cascade faces without such a dlib box). Angles "
        "between unit descriptors, in radians:\n\n"
        "| pair | n | median | 90th pct | max |\n|---|---|---|---|---|\n"
        f"{table}\n\n"
        f"Describing the cascade's box instead of dlib's own moves a descriptor by "
        f"{np.median(shifts):.3f} rad at the median, "
        f"{np.median(shifts) / np.median(different_angle):.0%} of the median gap between two "
        "people. The landmark model dlib's ResNet aligns with was trained on its detector's "
        "boxes; re-detecting with dlib around a foreign box before describing removes the "
        "shift where dlib finds the face, and cannot where it does not (the count above).\n"
    )


class ScikitImageCascade:
    """scikit-image's bundled LBP frontal-face cascade, as the tiny profile ran it before
    (scale step 1.2, 6 raw hits per box, nested boxes dropped): the peer."""

    def __init__(self, min_face_px: int) -> None:
        from skimage import data
        from skimage.feature import Cascade

        self.cascade = Cascade(data.lbp_frontal_face_cascade_filename())
        self.min_face_px = min_face_px

    def boxes(self, image: np.ndarray) -> list[np.ndarray]:
        from skimage.color import rgb2gray

        from perception.faces import _suppress_nested

        gray = rgb2gray(image).astype(np.float32)
        side = min(gray.shape)
        found = self.cascade.detect_multi_scale(
            img=gray, scale_factor=1.2, step_ratio=1, min_size=(self.min_face_px,) * 2,
            max_size=(side, side), min_neighbor_number=6,
        )  # fmt: skip
        xywh = [(box["c"], box["r"], box["width"], box["height"]) for box in found]
        return [np.array([x, y, x + w, y + h], np.float32) for x, y, w, h in _suppress_nested(xywh)]


def bench_detector(frames, faces, min_face_px: int) -> str:
    """The two cascades on the same frames, alternating: real faces found (each person of a
    frame counted once), false hits, ground-truth faces missed, milliseconds per frame."""
    ours = TinyFaceAnalyzer(min_face_px=min_face_px)
    detectors = {
        f"OpenCV's Haar cascade (`{ours.cascade_file}`, the tiny profile's, with its "
        "descriptors)": lambda image: [face.bbox for face in ours.detect(image)],
        "scikit-image's LBP cascade (the peer)": ScikitImageCascade(min_face_px).boxes,
    }
    found = {name: [0, 0, 0] for name in detectors}  # real, false, missed
    seconds = dict.fromkeys(detectors, 0.0)
    for index, image in frames.items():
        for name, detect in detectors.items():
            start = time.perf_counter()
            boxes = detect(image)
            seconds[name] += time.perf_counter() - start
            labels = [label(box, faces[index]) for box in boxes]
            people = set(labels) - {None}
            found[name][0] += len(people)
            found[name][1] += labels.count(None)
            found[name][2] += len(faces[index]) - len(people)
    expected = sum(len(faces[i]) for i in frames)
    rows = [
        f"| {name} | {real} | {false} | {missed} | {1000 * seconds[name] / len(frames):.0f} |"
        for name, (real, false, missed) in found.items()
    ]
    ours_name, peer_name = detectors
    return (
        f"Every {STRIDE}th frame of the sample movie ({len(frames)} frames of 640x360, "
        f"{expected} faces in the ground truth), each detector on each frame in turn, "
        f"`faces.min_face_px` {min_face_px}; the tiny profile's faces stage runs the first. "
        "A face is real when its box overlaps a ground-truth face at IoU >= 0.3.\n\n"
        "| detector | real faces found | false hits | faces missed | ms per frame |\n"
        "|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"OpenCV's cascade takes x{seconds[ours_name] / seconds[peer_name]:.2f} the peer's "
        "time.\n"
    )


def bench_similarity(dlib_found, cascade_found, threshold: float) -> str:
    lines, histograms, highest = [], [], []
    boxes = (("dlib's HOG boxes", dlib_found), ("the tiny cascade's boxes", cascade_found))
    for name, found in boxes:
        same, different = similarities(found)
        highest.append(different.max())
        lines.append(
            f"| {name} | {len(found)} | {len(same)} | {same.min():.3f} | "
            f"{np.percentile(same, 1):.3f} | {len(different)} | {different.max():.3f} | "
            f"{np.percentile(different, 99):.3f} | {(same >= threshold).mean():.1%} | "
            f"{(different < threshold).mean():.1%} |"
        )
        histograms.append(f"On {name}:\n\n{histogram(same, different, threshold)}")
    table = (
        "| boxes | faces | same-person pairs | lowest | 1st pct | different-people pairs | "
        f"highest | 99th pct | same >= {threshold} | different < {threshold} |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(lines)
    )
    rule = np.ceil(max(highest) * 100) / 100
    return (
        "dlib's cosine between the faces of two frames (real faces only, frames of every "
        f"{STRIDE}th), same person against different people, three people in all:\n\n"
        f"{table}\n\n"
        f"**The threshold**: the highest different-people similarity measured, rounded up to "
        f"the next 0.01, is {rule:.2f}; params.yaml's `triplets.min_identity_similarity` is "
        f"{threshold}. No pair of two people passes it and every same-person pair of the sample "
        "lies well above it. The sample shows each person in one photograph (the same face "
        "under camera moves and compression), so real movies spread the same-person side "
        "lower: the threshold sits at the different-people edge rather than in the middle of "
        "the gap, to keep as many true pairs as possible. With three people the different side "
        "is three pairs of faces; a cast with look-alikes needs its own measurement. The "
        "evaluation check (`evaluation.min_face_similarity` in `full`) uses the same value on "
        "the same scale.\n\n" + "\n\n".join(histograms)
    )


def grouping_scores(characters, faces, truth: dict, stride: int, min_frames: int) -> dict:
    """Purity: the share of grouped frames whose person is their group's majority. Recall: the
    share of frames whose chosen face is a person's that land in that person's group."""
    grouped = {}
    for cid, group in characters.groupby("character_id"):
        who = [
            identity_at(truth, int(f), list(b))
            for f, b in zip(group["frame_idx"], group["bbox"], strict=True)
        ]
        grouped[cid] = who
    majority = {cid: max(set(who), key=who.count) for cid, who in grouped.items()}
    in_groups = sum(len(who) for who in grouped.values())
    agreeing = sum(who.count(majority[cid]) for cid, who in grouped.items())
    people = [
        identity_at(truth, int(f), list(b))
        for f, b in zip(faces["frame_idx"], faces["bbox"], strict=True)
    ]
    recalled = sum(
        who.count(majority[cid]) for cid, who in grouped.items() if majority[cid] is not None
    )
    report = compare_with_truth(characters, truth, stride, min_frames)
    return {
        "groups": len(grouped),
        "purity": agreeing / in_groups if in_groups else float("nan"),
        "recall": recalled / max(sum(p is not None for p in people), 1),
        "found": f"{len(set(report['found']))} of {len(report['expected'])}",
    }


def bench_mining(video: Path, truth: dict) -> str:
    """faces -> characters on the sample movie with each recogniser, at the pipeline's stride
    and at every 10th frame."""
    tiny, full = load_params(PARAMS, "tiny"), load_params(PARAMS, "full")

    def characters_params(threshold: float) -> CharactersParams:
        return tiny.characters.model_copy(update={"similarity_threshold": threshold})

    cascade = TinyFaceAnalyzer(min_face_px=tiny.faces.min_face_px)
    recognisers: list[tuple[str, FaceAnalyzer, DlibFaceAnalyzer | None, CharactersParams]] = [
        ("tiny (`faces.recogniser: profile`)", cascade, None, tiny.characters),
        (
            "dlib (`faces.recogniser: dlib`, the cascade's boxes)",
            cascade,
            Priors("tiny", faces=tiny.faces).dlib_faces(),
            characters_params(tiny.triplets.min_identity_similarity),
        ),
    ]
    try:  # where its weights exist: full's SCRFD boxes and ArcFace, full's threshold
        antelopev2 = Priors("full", faces=full.faces).face_analyzer()
        name = "antelopev2 (`full`, SCRFD boxes)"
        recognisers.append(
            (name, antelopev2, None, characters_params(full.characters.similarity_threshold))
        )
        missing = ""
    except FileNotFoundError as e:
        missing = f"antelopev2 (SCRFD + ArcFace, the `full` profile): not measured: {e}.\n"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stride in (tiny.frames.stride, STRIDE):
            folder = Path(tmp) / f"frames-{stride}"
            frames = extract_frames(video, folder, "sample", stride, relative_to=Path(tmp))
            for name, analyzer, recogniser, params in recognisers:
                faces = detect_faces(
                    frames, Path(tmp), analyzer, tiny.faces.min_face_px, recogniser=recogniser
                )
                characters = build_characters(faces, params)
                scores = grouping_scores(characters, faces, truth, stride, params.min_frames)
                rows.append(
                    f"| {name} | {params.similarity_threshold} | {stride} | {len(faces)} | "
                    f"{scores['groups']} | {scores['purity']:.3f} | {scores['recall']:.3f} | "
                    f"{scores['found']} |"
                )
    return (
        "The faces and characters stages' code on the sample movie, each recogniser with the "
        "similarity threshold of its own scale (the tiny descriptor's and antelopev2's from "
        "params.yaml, dlib's the triplets' measured bar), `characters.min_frames` "
        f"{tiny.characters.min_frames} and `max_frames` {tiny.characters.max_frames} (at "
        "stride 10 a person's group can outgrow it and lose its least similar frames, which "
        "counts against recall). Purity: the share of grouped frames showing their "
        "group's majority person; recall: the share of frames whose chosen face is a person's "
        "that land in that person's group; people found: those who are the only person of "
        "some group, of those seen alone in enough frames.\n\n"
        "| recogniser | threshold | stride | frames with a face | groups | purity | recall | "
        "people found |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n" + missing
    )


CALIBRATION_SECTION = "Identity: threshold calibration on the labelled faces at hand"


def labelled_faces_at_hand(root: Path, dlib: DlibFaceAnalyzer) -> Path:
    """A folder per person of every labelled face photograph the installed packages ship: the
    sample movie's three portraits, and each face of insightface's group photo (`t1.jpg`, one
    person per face, unnamed). One photograph per person: no same-person pair exists."""
    from importlib import resources

    from PIL import Image

    from core.io import load_rgb

    for name in PEOPLE:
        (root / name).mkdir(parents=True)
        Image.fromarray(_portrait(name)).save(root / name / "1.png")
    group = load_rgb(Path(str(resources.files("insightface") / "data" / "images" / "t1.jpg")))
    for k, face in enumerate(dlib.detect(group)):
        x1, y1, x2, y2 = face.bbox.astype(int)
        pad = (x2 - x1) // 2
        crop = group[max(y1 - pad, 0) : y2 + pad, max(x1 - pad, 0) : x2 + pad]
        (root / f"t1_face_{k}").mkdir()
        Image.fromarray(crop).save(root / f"t1_face_{k}" / "1.png")
    return root


def bench_calibration(dlib: DlibFaceAnalyzer, threshold: float) -> str:
    """`cameo identity calibrate`'s code on the labelled faces at hand, and how few they are."""
    from perception.calibration import calibrate, calibration_report, folder_pairs

    with tempfile.TemporaryDirectory() as tmp:
        root = labelled_faces_at_hand(Path(tmp), dlib)
        result = calibrate(folder_pairs(root), dlib)
    grid = [0.80, 0.85, 0.88, 0.90, threshold, 0.92, 0.94, 0.96]
    return (
        "`cameo identity calibrate`'s code on every labelled face photograph this machine "
        "has offline: the sample movie's three portraits and the faces of insightface's "
        "group photo, one photograph per person.\n\n"
        + calibration_report(result, "dlib", 0.001, grid)
        + "\n\n**How few that is**: no person has two independent photographs, so nothing "
        "here measures the false-non-match rate, and the different-people side is a few dozen "
        "pairs, so no false-match rate under a few percent can be measured. params.yaml's "
        f"identity thresholds ({threshold} for dlib) stay priors from dlib's documented "
        "operating point (Euclidean 0.6, cosine 0.903-0.928 at its descriptors' lengths) "
        "until `cameo identity calibrate` runs on a labelled set such as LFW "
        "(`--pairs pairs.txt`)."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--part", choices=["all", "detector", "calibration", "boxes"], default="all"
    )
    args = parser.parse_args(argv)
    values = load_params(PARAMS, "tiny")
    dlib = Priors("tiny", faces=values.faces).dlib_faces()
    if args.part in ("all", "calibration"):
        threshold = values.triplets.min_identity_similarity
        write_section(CALIBRATION_SECTION, bench_calibration(dlib, threshold))
        if args.part == "calibration":
            return
    with tempfile.TemporaryDirectory() as tmp:
        layout = DataLayout(Path(tmp))
        video = write_sample_movie(layout)
        truth = json.loads(layout.ground_truth("sample").read_text())
        frames = decode(video, STRIDE)
        faces = true_faces(truth, dlib)
        if args.part in ("all", "boxes"):
            write_section(BOXES_SECTION, bench_foreign_boxes(frames, faces, dlib))
            if args.part == "boxes":
                return
        write_section(DETECTOR_SECTION, bench_detector(frames, faces, values.faces.min_face_px))
        if args.part == "detector":
            return
        detection, dlib_found = bench_detection(frames, faces, dlib)
        write_section("Identity: dlib's face detector on the sample movie", detection)
        threshold = values.triplets.min_identity_similarity
        similarity = bench_similarity(dlib_found, cascade_faces(frames, faces, dlib), threshold)
        write_section("Identity similarity on the sample movie", similarity)
        mining = bench_mining(video, truth)
        write_section("Identity: character mining by recogniser", mining)


if __name__ == "__main__":
    main()
