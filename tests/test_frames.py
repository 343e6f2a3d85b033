from pathlib import Path

import av
import numpy as np
import pytest

from assets.frames import VideoReadError, check_frames, extract_frames


def write_video(path: Path, n_frames: int, size=(64, 48), fps: int = 25) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(n_frames):
            image = np.full((size[1], size[0], 3), i % 256, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def test_every_stride_th_frame_is_kept(tmp_path: Path):
    video = write_video(tmp_path / "m.mp4", 120)
    df = extract_frames(video, tmp_path / "out", "m", stride=50, relative_to=tmp_path)
    assert df["frame_idx"].tolist() == [0, 50, 100]
    np.testing.assert_allclose(df["pts_s"], [0.0, 2.0, 4.0])
    assert (df["width"] == 64).all() and (df["height"] == 48).all()
    assert all((tmp_path / p).is_file() for p in df["path"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "00000000.jpg",
        "00000050.jpg",
        "00000100.jpg",
    ]
    assert check_frames(df, tmp_path, stride=50).passed


def test_check_fails_when_the_stride_is_not_respected(tmp_path: Path):
    video = write_video(tmp_path / "m.mp4", 60)
    df = extract_frames(video, tmp_path / "out", "m", stride=25, relative_to=tmp_path)
    result = check_frames(df, tmp_path, stride=50)
    assert not result.passed
    assert "frame_idx_mod_stride" in result.description and "25" in result.description


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a video at all" * 100, b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 500],
    ids=["empty", "text", "truncated-mp4"],
)
def test_unreadable_files_raise_an_error_naming_the_file(tmp_path: Path, content: bytes):
    bad = tmp_path / "broken movie.mp4"
    bad.write_bytes(content)
    with pytest.raises(VideoReadError, match=r"broken movie\.mp4"):
        extract_frames(bad, tmp_path / "out", "broken-movie")


def test_stride_must_be_positive(tmp_path: Path):
    with pytest.raises(ValueError, match="stride"):
        extract_frames(tmp_path / "x.mp4", tmp_path / "out", "x", stride=0)
