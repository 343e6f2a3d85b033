"""Stage 1, frame extraction (article 2.1.1): every Nth frame of a movie, N = 50.

Sequential decode with PyAV (seeking is slower at this stride); only the kept frames are
converted to RGB, and each is written to disk as soon as it is decoded, so memory stays
flat however long the movie is.
"""

import warnings
from pathlib import Path

import av
import dagster as dg
import pandas as pd
from PIL import Image
from tqdm import tqdm

from assets.quality import check_result
from assets.stage import MovieStage, movie_asset, movie_check
from core.io import DEFAULT_MAX_PIXELS, atomic_path, read_table, write_table


class VideoReadError(RuntimeError):
    """A movie file that cannot be opened or decoded; the message names the file."""


class TruncatedVideoWarning(UserWarning):
    """A movie that ends before its header says it does (e.g. a download cut short)."""


def truncation_warning(video: Path, stream, decoded: int, last_s: float | None) -> str:
    """Why `video` looks cut short ('' when it does not): fewer frames decoded than its
    header declares, or (without a frame count) an end well before its duration."""
    declared = stream.frames or 0
    if declared and decoded < declared - max(2, declared // 100):
        return f"{video.name}: decoded {decoded} of the {declared} frames its header declares"
    duration_s = float(stream.duration * stream.time_base) if stream.duration else 0.0
    if not declared and duration_s and last_s is not None and last_s < duration_s * 0.98 - 1.0:
        return f"{video.name}: decoding stopped at {last_s:.1f} s of {duration_s:.1f} s"
    return ""


def extract_frames(
    video: Path,
    out_dir: Path,
    movie: str,
    stride: int = 50,
    jpeg_quality: int = 95,
    relative_to: Path | None = None,
    progress: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> pd.DataFrame:
    """Decode `video` front to back and save every `stride`-th frame as JPEG in `out_dir`.

    Returns one row per kept frame: movie, frame_idx, pts_s, path (relative to
    `relative_to` when given), width, height. Frames over `max_pixels` raise
    VideoReadError; a movie that ends early warns (TruncatedVideoWarning) and keeps what
    was decoded.
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
        last_s = None
        try:
            for frame_idx, frame in enumerate(
                tqdm(container.decode(stream), total=total, unit="frame", disable=not progress)
            ):
                last_s = frame.time
                if frame_idx % stride:
                    continue
                if frame.width * frame.height > max_pixels:
                    raise VideoReadError(
                        f"{video}: {frame.width}x{frame.height} frames, over the limit of "
                        f"{max_pixels} pixels (images.max_pixels)"
                    )
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
        if message := truncation_warning(video, stream, frame_idx + 1, last_s):
            warnings.warn(TruncatedVideoWarning(message), stacklevel=2)
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


@movie_asset(group="identity_mining", kinds={"pyav"})
def frames(context: dg.AssetExecutionContext, stage: MovieStage) -> dg.MaterializeResult:
    """Every Nth frame as JPEG under `frames/{movie}/`, indexed in `frames/{movie}.parquet`."""
    layout, movie, video = stage.layout, stage.movie, stage.video
    params = stage.params.frames
    out_dir = layout.stage_dir("frames", movie)
    with atomic_path(out_dir) as tmp_dir, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TruncatedVideoWarning)
        df = extract_frames(
            video,
            tmp_dir,
            movie,
            params.stride,
            params.jpeg_quality,
            max_pixels=stage.params.images.max_pixels,
        )
        # Paths are recorded where the folder will be once it is renamed into place.
        df["path"] = [str((out_dir / Path(p).name).relative_to(layout.root)) for p in df["path"]]
    truncated = [str(w.message) for w in caught if issubclass(w.category, TruncatedVideoWarning)]
    for message in truncated:
        context.log.warning(message)
    table = layout.table("frames", movie)
    write_table(df, table)
    context.log.info(f"{video.name}: kept {len(df)} frames at stride {params.stride}")
    return dg.MaterializeResult(
        metadata={
            "movie_file": str(video),
            "frames": len(df),
            "stride": params.stride,
            "duration_s": float(df["pts_s"].max()),
            "warning": "; ".join(truncated),
            "table": dg.MetadataValue.path(str(table)),
        },
    )


@movie_check(frames)
def frames_check(stage: MovieStage) -> dg.AssetCheckResult:
    """Stride respected, timestamps increasing, files on disk."""
    df = read_table(stage.layout.table("frames", stage.movie))
    return check_frames(df, stage.layout.root, stage.params.frames.stride)
