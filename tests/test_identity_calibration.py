"""`cameo identity calibrate`: error rates of a recogniser on labelled faces, and the threshold
proposed at a target false-match rate, on the real photographs the packages ship."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner
from skimage import data

from assets.sample_movie import _portrait
from orchestration.cli.main import main
from perception.calibration import Calibration, LabelledPair, folder_pairs, lfw_pairs


def test_the_threshold_at_a_target_fmr_rejects_all_but_that_share_of_different_pairs():
    calibration = Calibration(
        same=np.array([0.95, 0.97, 0.89]),
        different=np.array([0.85, 0.90, 0.86, 0.80]),
        people=3,
        images=5,
        no_face=(),
    )
    strict = calibration.threshold_at(0.0)
    assert 0.90 < strict < 0.9000001
    rates = calibration.rates([strict]).iloc[0]
    assert rates.fmr == 0.0 and rates.fnmr == pytest.approx(1 / 3)  # 0.89 is below it
    assert calibration.rates([0.86]).fmr[0] == 0.5  # 0.86 and 0.90 match at 0.86
    quarter = calibration.threshold_at(0.25)  # one of four different pairs may match
    assert calibration.rates([quarter]).fmr[0] == 0.25


def test_lfw_pairs_are_read_as_lfw_writes_them(tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1\t2\nAaron_Peirsol\t1\t2\nAJ_Cook\t1\tMarsha_Thomason\t1\n")
    assert lfw_pairs(pairs, tmp_path) == [
        LabelledPair(
            tmp_path / "Aaron_Peirsol/Aaron_Peirsol_0001.jpg",
            tmp_path / "Aaron_Peirsol/Aaron_Peirsol_0002.jpg",
            True,
        ),
        LabelledPair(
            tmp_path / "AJ_Cook/AJ_Cook_0001.jpg",
            tmp_path / "Marsha_Thomason/Marsha_Thomason_0001.jpg",
            False,
        ),
    ]
    pairs.write_text("1\t2\nAaron_Peirsol\t1\n")
    with pytest.raises(ValueError, match=r"pairs.txt:2: expected 'name i j'"):
        lfw_pairs(pairs, tmp_path)


def test_calibrate_reports_the_rates_and_what_they_stand_on(tmp_path):
    """Three people, two pictures each (the photograph and a 0.75x JPEG of it: not
    independent pictures, so the same-person side is optimistic), and a cat, whose folder
    has no face."""
    people = {
        "eileen_collins": data.astronaut(),
        "grace_hopper": _portrait("grace_hopper"),
        "luis_pedro_coelho": _portrait("luis_pedro_coelho"),
        "chelsea": data.chelsea(),
    }
    for name, image in people.items():
        folder = tmp_path / "faces" / name
        folder.mkdir(parents=True)
        picture = PIL.Image.fromarray(image)
        picture.save(folder / "1.png")
        smaller = picture.resize((picture.width * 3 // 4, picture.height * 3 // 4))
        smaller.save(folder / "2.jpg", quality=80)
    assert sum(p.same for p in folder_pairs(tmp_path / "faces")) == 4
    result = CliRunner().invoke(
        main, ["identity", "calibrate", str(tmp_path / "faces"), "--fmr", "0.01"]
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Recogniser **dlib**: 4 people, 8 images (2 without a face), 3 same-person pairs" in out
    assert "12 different-people pairs" in out
    assert "| 0.91 |" in out and "Proposed threshold at FMR 0.01" in out
    assert "the smallest FMR this can measure is 0.0833" in out
