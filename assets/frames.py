"""Stage 1, frame extraction (article 2.1.1): every Nth frame of a movie, N = 50.

Sequential decode with PyAV (seeking is slower at this stride); only the kept frames are
converted to RGB, and each is written to disk as soon as it is decoded, so memory stays
flat however long the movie is.
"""

from dataclasses import dataclass
from pathlib import Path

import av
import dagster as dg
import pandas as pd
from PIL import Image
from tqdm import tqdm

from assets.layout import atomic_path, write_table
from assets.partitions import movie_partitions
from assets.quality import blocking_spec, check_result


@dataclass(frozen=True)
class FramesParams:
    stride: int = 50
    jpeg_quality: int = 95


class VideoReadError(RuntimeError):
    """A movie file that cannot be opened or decoded; the message names the file."""


def extract_frames(
    video: Path,
    out_dir: Path,
    movie: str,
    stride: int = 50,
    jpeg_quality: int = 95,
    relative_to: Path | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Decode `video` front to back and save every `stride`-th frame as JPEG in `out_dir`.

    Returns one row per kept frame: movie, frame_idx, pts_s, path (relative to
    `relative_to` when given), width, height.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        container = av.open(str(video))
    except (av.error.FFmpegError, OSError) as e:
        raise VideoReadError(f"{video}: not a readable video ({e})") from e
    rows = []
    frame_idx = -1
    with container:
        if not container.streams.video:
            raise VideoReadError(f"{video}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or 0) or None
        total = stream.frames or None
        try:
            for frame_idx, frame in enumerate(
                tqdm(container.decode(stream), total=total, unit="frame", disable=not progress)
            ):
                if frame_idx % stride:
                    continue
                rgb = frame.to_ndarray(format="rgb24", threads=1)
                path = out_dir / f"{frame_idx:08d}.jpg"
                Image.fromarray(rgb).save(path, quality=jpeg_quality)
                pts_s = float(frame.time) if frame.time is not None else frame_idx / (fps or 1.0)
                rows.append(
                    {
                        "movie": movie,
                        "frame_idx": frame_idx,
                        "pts_s": pts_s,
                        "path": str(path.relative_to(relative_to) if relative_to else path),
                        "width": rgb.shape[1],
                        "height": rgb.shape[0],
                    }
                )
        except av.error.FFmpegError as e:
            raise VideoReadError(f"{video}: decoding failed after frame {frame_idx} ({e})") from e
    if not rows:
        raise VideoReadError(f"{video}: no frame could be decoded")
    return pd.DataFrame(rows)


def frames_expectations(stride: int) -> list:
    import great_expectations as gx

    e = gx.expectations
    return [
        e.ExpectTableRowCountToBeBetween(min_value=1),
        e.ExpectColumnValuesToBeUnique(column="frame_idx"),
        e.ExpectColumnValuesToBeInSet(column="frame_idx_mod_stride", value_set=[0]),
        e.ExpectColumnValuesToBeIncreasing(column="pts_s", strictly=True),
        e.ExpectColumnValuesToBeBetween(column="width", min_value=1),
        e.ExpectColumnValuesToBeBetween(column="height", min_value=1),
        e.ExpectColumnValuesToBeInSet(column="file_exists", value_set=[True]),
    ]


def check_frames(df: pd.DataFrame, root: Path, stride: int) -> dg.AssetCheckResult:
    view = df.assign(
        frame_idx_mod_stride=df["frame_idx"] % stride,
        file_exists=[(root / p).is_file() for p in df["path"]],
    )
    return check_result("frames_expectations", view, frames_expectations(stride), "frames")


@dg.asset(
    partitions_def=movie_partitions,
    required_resource_keys={"data", "params"},
    check_specs=[
        blocking_spec(
            "frames",
            "frames_expectations",
            "stride respected, timestamps increasing, files on disk",
        )
    ],
    group_name="identity_mining",
    kinds={"pyav"},
)
def frames(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Every Nth frame as JPEG under frames/<movie>/, indexed in frames/<movie>.parquet."""
    layout = context.resources.data.layout
    params = FramesParams(**context.resources.params.section("frames"))
    movie = context.partition_key
    video = layout.movie(movie)
    with atomic_path(layout.stage_dir("frames", movie)) as tmp_dir:
        df = extract_frames(video, tmp_dir, movie, params.stride, params.jpeg_quality)
        # Paths are recorded where the folder will be once it is renamed into place.
        df["path"] = [
            str((layout.stage_dir("frames", movie) / Path(p).name).relative_to(layout.root))
            for p in df["path"]
        ]
    table = layout.table("frames", movie)
    write_table(df, table)
    context.log.info(f"{video.name}: kept {len(df)} frames at stride {params.stride}")
    return dg.MaterializeResult(
        metadata={
            "movie_file": str(video),
            "frames": len(df),
            "stride": params.stride,
            "duration_s": float(df["pts_s"].max()),
            "table": dg.MetadataValue.path(str(table)),
        },
        check_results=[check_frames(df, layout.root, params.stride)],
    )
