"""Calibrating a recogniser's identity threshold on labelled faces (`cameo identity calibrate`).

Labelled faces come as a folder per person (every pair of images within a folder is a
same-person pair, every pair across folders a different-people pair) or in LFW's `pairs.txt`
layout (a header line, then `name i j` for a same-person pair and `name1 i name2 j` for a
different-people pair, the images at `<root>/<name>/<name>_<i:04d>.jpg`). Each image gives
its largest face to the recogniser; the cosines of the pairs give the false-match rate (FMR:
different people at or above a threshold) and the false-non-match rate (FNMR: one person
below it), and the threshold proposed for a target FMR is the lowest whose FMR does not
exceed it. With N different-people pairs no FMR below 1/N can be measured: the report says
how many pairs each number stands on.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.io import load_rgb
from perception.faces import FaceAnalyzer, cosine

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class LabelledPair:
    a: Path
    b: Path
    same: bool


def folder_pairs(root: Path) -> list[LabelledPair]:
    """Every pair of a folder-per-person layout (folders sorted, images sorted)."""
    people = {
        folder.name: sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for folder in sorted(Path(root).iterdir())
        if folder.is_dir()
    }
    pairs = [
        LabelledPair(a, b, True)
        for images in people.values()
        for a, b in itertools.combinations(images, 2)
    ]
    for (_, first), (_, second) in itertools.combinations(people.items(), 2):
        pairs += [LabelledPair(a, b, False) for a in first for b in second]
    return pairs


def lfw_pairs(pairs_file: Path, root: Path) -> list[LabelledPair]:
    """The pairs of an LFW `pairs.txt`; a line of another shape is refused with its number."""

    def image(name: str, number: str) -> Path:
        return Path(root) / name / f"{name}_{int(number):04d}.jpg"

    pairs = []
    lines = Path(pairs_file).read_text().splitlines()
    for number, line in enumerate(lines[1:], start=2):  # the first line: set and pair counts
        fields = line.split()
        if len(fields) == 3:
            pairs.append(
                LabelledPair(image(fields[0], fields[1]), image(fields[0], fields[2]), True)
            )
        elif len(fields) == 4:
            pairs.append(LabelledPair(image(*fields[:2]), image(*fields[2:]), False))
        elif fields:
            raise ValueError(f"{pairs_file}:{number}: expected 'name i j' or 'name1 i name2 j'")
    return pairs


@dataclass(frozen=True)
class Calibration:
    """The cosines of the labelled pairs whose two images both have a face."""

    same: np.ndarray
    different: np.ndarray
    people: int
    images: int
    no_face: tuple[Path, ...]  # images where the recogniser found no face

    def rates(self, thresholds: Iterable[float]) -> pd.DataFrame:
        """FMR and FNMR at each threshold (NaN where there is no pair of that kind)."""
        rows = []
        for threshold in thresholds:
            fmr = float((self.different >= threshold).mean()) if len(self.different) else np.nan
            fnmr = float((self.same < threshold).mean()) if len(self.same) else np.nan
            rows.append({"threshold": float(threshold), "fmr": fmr, "fnmr": fnmr})
        return pd.DataFrame(rows)

    def threshold_at(self, target_fmr: float) -> float | None:
        """The lowest threshold whose FMR is at most `target_fmr` (just above the different
        pair it must reject), or None without different-people pairs."""
        if not len(self.different):
            return None
        ordered = np.sort(self.different)[::-1]
        allowed = int(np.floor(target_fmr * len(ordered)))  # pairs that may still match
        return float(np.nextafter(ordered[allowed], 1.0)) if allowed < len(ordered) else -1.0


def calibrate(
    pairs: Sequence[LabelledPair],
    recogniser: FaceAnalyzer,
    progress: Callable[[Iterable[Path]], Iterable[Path]] = iter,
) -> Calibration:
    """Each image's largest face through `recogniser`, then the pairs' cosines."""
    paths = sorted({p for pair in pairs for p in (pair.a, pair.b)})
    embeddings, no_face = {}, []
    for path in progress(paths):
        faces = recogniser.detect(load_rgb(path))
        if not faces:
            no_face.append(path)
            continue
        largest = max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
        embeddings[path] = largest.embedding
    scored = [
        (cosine(embeddings[pair.a], embeddings[pair.b]), pair.same)
        for pair in pairs
        if pair.a in embeddings and pair.b in embeddings
    ]
    return Calibration(
        same=np.array([s for s, same in scored if same], np.float64),
        different=np.array([s for s, same in scored if not same], np.float64),
        people=len({p.parent.name for p in paths}),
        images=len(paths),
        no_face=tuple(no_face),
    )


def calibration_report(
    calibration: Calibration, recogniser: str, target_fmr: float, thresholds: Sequence[float]
) -> str:
    """The Markdown report: what it stands on, the rates over thresholds, the proposal."""
    c = calibration
    lines = [
        f"Recogniser **{recogniser}**: {c.people} people, {c.images} images "
        f"({len(c.no_face)} without a face), {len(c.same)} same-person pairs and "
        f"{len(c.different)} different-people pairs.",
        "",
        "| threshold | FMR (different people at or above) | FNMR (one person below) |",
        "|---|---|---|",
    ]
    for row in c.rates(thresholds).to_dict(orient="records"):
        lines.append(f"| {row['threshold']:.2f} | {_rate(row['fmr'])} | {_rate(row['fnmr'])} |")
    proposed = c.threshold_at(target_fmr)
    lines.append("")
    if proposed is None:
        lines.append("No different-people pair: no threshold can be proposed.")
    else:
        floor = 1 / len(c.different)
        lines.append(
            f"Proposed threshold at FMR {target_fmr:g}: **{proposed:.4f}** (the lowest whose "
            f"FMR does not exceed it; its FNMR here: {_rate(c.rates([proposed]).fnmr[0])})."
            + (
                f" With {len(c.different)} different-people pairs the smallest FMR this can "
                f"measure is {floor:.3g}: the target is below it, so the proposal only "
                "rejects every pair seen."
                if target_fmr < floor
                else ""
            )
        )
    if not len(c.same):
        lines.append("No same-person pair (two images of one person): FNMR cannot be measured.")
    return "\n".join(lines)


def _rate(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.4f}"
