"""Dataset-stage benchmarks.

- frames stage vs PyAV decode-only of the same file, measured alternately in one run, as a
  ratio (target <= 1.1: the stage should cost little beyond decoding);
- character grouping time for 5k and 100k face embeddings;
- incremental builds: `cameo dataset build` adding one movie to 5 built ones vs building that
  movie alone (goal <= 1.3: the built movies cost next to nothing).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from click.testing import CliRunner

from assets.characters import group_characters
from assets.frames import extract_frames
from assets.sample_movie import write_sample_movie
from bench.report import PARAMS, write_section
from core.layout import DataLayout
from orchestration.cli.main import main as cameo


def decode_only(video: Path) -> int:
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # the same decoder settings as the frames stage
        return sum(1 for _ in container.decode(stream))


def bench_frames(video: Path, repeats: int = 7) -> str:
    decode_s, stage_s = [], []
    n_frames = decode_only(video)  # warm the page cache
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            t = time.perf_counter()
            decode_only(video)
            decode_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            kept = extract_frames(video, Path(tmp) / f"run{i}", "bench", stride=50)
            stage_s.append(time.perf_counter() - t)
    decode, stage = statistics.median(decode_s), statistics.median(stage_s)
    # Each repeat times both back to back, so its ratio sees the same machine load.
    ratios = [s / d for s, d in zip(stage_s, decode_s, strict=True)]
    return (
        f"Movie: {video.name}, {n_frames} frames, stride 50 ({len(kept)} kept), "
        f"{repeats} alternating repeats, medians.\n\n"
        "| measurement | seconds | frames/s |\n|---|---|---|\n"
        f"| PyAV decode only | {decode:.3f} | {n_frames / decode:.0f} |\n"
        f"| frames stage (decode + convert + JPEG of kept frames) | {stage:.3f} | "
        f"{n_frames / stage:.0f} |\n\n"
        f"**Ratio frames stage / decode only (median of per-repeat ratios): "
        f"{statistics.median(ratios):.3f}** (each: {', '.join(f'{r:.3f}' for r in ratios)}; "
        "target <= 1.1)\n"
    )


def clustered_embeddings(n: int, identities: int, noise: float, seed: int = 0) -> np.ndarray:
    """Unit embeddings of `identities` people, `noise` controls within-person spread."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((identities, 512)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, identities, n)]
    x += noise * rng.standard_normal((n, 512)).astype(np.float32) / np.sqrt(512)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def bench_grouping() -> str:
    rows = []
    for n, identities in ((5_000, 100), (100_000, 1_000)):
        emb = clustered_embeddings(n, identities, noise=0.8)
        t = time.perf_counter()
        groups = group_characters(emb, threshold=0.5, min_frames=5, max_frames=200)
        seconds = time.perf_counter() - t
        rows.append(f"| {n:,} | {identities:,} | {len(groups):,} | {seconds:.2f} |")
    return (
        "Synthetic clustered unit embeddings (512-d), threshold 0.5, min 5, max 200.\n\n"
        "| embeddings | identities | groups kept | seconds |\n|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\nThe greedy rule costs one similarity row per group seed, so the time grows with "
        "embeddings x groups; it is quadratic only when almost every frame is its own group.\n"
    )


def timed_build(root: Path) -> float:
    """Seconds of `cameo dataset build` (tiny profile) on the data root."""
    t = time.perf_counter()
    result = CliRunner().invoke(
        cameo,
        ["dataset", "build", "--data", str(root), "--params", str(PARAMS), "--profile", "tiny"],
    )
    seconds = time.perf_counter() - t
    if result.exit_code != 0:
        raise RuntimeError(result.output)
    return seconds


def bench_incremental(video: Path, tmp: Path, built: int = 5) -> str:
    os.environ["DAGSTER_HOME"] = str(tmp / "dagster")
    many, alone = tmp / "many" / "movies", tmp / "alone" / "movies"
    for folder in (many, alone):
        folder.mkdir(parents=True)
    for i in range(built):
        shutil.copy(video, many / f"movie-{i}.mp4")
    first_s = timed_build(many.parent)
    shutil.copy(video, alone / "new.mp4")
    alone_s = timed_build(alone.parent)
    shutil.copy(video, many / "new.mp4")
    added_s = timed_build(many.parent)
    unchanged_s = timed_build(many.parent)
    return (
        f"`cameo dataset build` (tiny profile, CPU, every stage and the triplets) on copies of "
        f"the sample movie, one run each.\n\n"
        "| build | seconds |\n|---|---|\n"
        f"| {built} movies from scratch | {first_s:.1f} |\n"
        f"| one movie alone | {alone_s:.1f} |\n"
        f"| one movie added to {built} built ones | {added_s:.1f} |\n"
        f"| again, nothing changed | {unchanged_s:.1f} |\n\n"
        f"**Ratio add one to {built} / one movie alone: {added_s / alone_s:.2f}** (goal <= 1.3)\n"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        video = write_sample_movie(DataLayout(Path(tmp)))
        write_section("Frames stage vs PyAV decode", bench_frames(video))
        write_section("Incremental dataset build", bench_incremental(video, Path(tmp)))
    write_section("Character grouping", bench_grouping())


if __name__ == "__main__":
    main()
