"""The sample movie is the same file on every machine: DVC pins its md5 in data/movies.dvc."""

import hashlib
from pathlib import Path

import av

from core.layout import DataLayout

# What data/movies.dvc records; x86-64 with the pinned PyAV.
SAMPLE_MD5 = "ec97bd5290a1a59dfbcc431267810ca3"
SAMPLE_SIZE = 2_197_531
# The decoded YUV planes of all 1850 frames (H.264 decoding is exact by the standard).
DECODED_MD5 = "365aa55da14b1b01f2deef9b1cd171b8"


def test_the_sample_movie_has_fixed_bytes_and_frames(sample_root: Path):
    video = DataLayout(sample_root).movies_dir / "sample.mp4"
    data = video.read_bytes()
    assert (len(data), hashlib.md5(data).hexdigest()) == (SAMPLE_SIZE, SAMPLE_MD5)
    decoded = hashlib.md5()
    with av.open(str(video)) as container:
        frames = 0
        for frame in container.decode(video=0):
            decoded.update(frame.to_ndarray().tobytes())  # yuv420p as stored: no conversion
            frames += 1
    assert (frames, decoded.hexdigest()) == (1850, DECODED_MD5)
    assert b"Lavf" not in data  # no library version strings in the container
