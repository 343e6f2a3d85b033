"""The article's two identity rules on hand-made embeddings."""

import numpy as np
import pandas as pd
import pytest

from assets.characters import (
    CharactersParams,
    build_characters,
    group_characters,
    no_character_reason,
)
from assets.faces import select_distinctive_face


def unit(*rows):
    m = np.array(rows, dtype=np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def test_single_face_is_chosen():
    assert select_distinctive_face(unit([1, 0, 0])) == 0


def test_lowest_summed_similarity_wins():
    # Faces 0 and 1 look alike; face 2 is the odd one out.
    emb = unit([1, 0, 0], [0.9, 0.1, 0], [0, 0, 1])
    assert select_distinctive_face(emb) == 2


def test_two_faces_always_tie_and_the_larger_wins():
    emb = unit([1, 0, 0], [0, 1, 0])
    assert select_distinctive_face(emb, areas=np.array([10.0, 50.0])) == 1
    assert select_distinctive_face(emb, areas=np.array([50.0, 10.0])) == 0


def test_equal_tie_goes_to_the_earlier_face():
    emb = unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    assert select_distinctive_face(emb, areas=np.array([5.0, 5.0, 5.0])) == 0
    assert select_distinctive_face(emb) == 0


def test_no_faces_is_an_error():
    with pytest.raises(ValueError):
        select_distinctive_face(np.zeros((0, 512)))


def test_grouping_threshold_order_and_ties():
    a, b = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    emb = unit(a, b, a + 0.2 * b, a, b + 0.1 * a, a + 0.4 * b)
    sims_to_0 = emb @ emb[0]
    groups = group_characters(emb, threshold=0.9, min_frames=1, max_frames=10)
    # Frame 0 seeds A: itself (1.0), frame 3 (1.0, tie kept in frame order), then 2, then 5.
    assert groups[0].members.tolist() == [0, 3, 2, 5]
    np.testing.assert_allclose(groups[0].similarity, sims_to_0[[0, 3, 2, 5]], rtol=1e-6)
    assert groups[1].members.tolist() == [1, 4]
    # 0.9 is inclusive: a frame exactly at the threshold joins.
    at = np.array([0.9, np.sqrt(1 - 0.81), 0])
    assert group_characters(unit(a, at), 0.9, 1, 5)[0].members.tolist() == [0, 1]


def test_grouping_min_drops_and_max_truncates():
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:3]
    sizes = [6, 2, 4]
    emb = np.concatenate(
        [c + 0.05 * rng.standard_normal((n, 8)) for c, n in zip(centres, sizes, strict=True)]
    )
    groups = group_characters(unit(*emb), threshold=0.8, min_frames=3, max_frames=5)
    assert [len(g.members) for g in groups] == [5, 4]
    assert all(np.all(np.diff(g.similarity) <= 1e-7) for g in groups)
    members = np.concatenate([g.members for g in groups])
    assert len(members) == len(set(members.tolist()))
    with pytest.raises(ValueError):
        group_characters(emb, 0.8, min_frames=5, max_frames=3)


def test_grouping_does_not_depend_on_block_size():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((20, 64))
    emb = centres[rng.integers(0, 20, 500)] + 0.3 * rng.standard_normal((500, 64))
    reference = group_characters(emb, 0.7, 2, 100, block=1)
    for block in (7, 256, 1000):
        got = group_characters(emb, 0.7, 2, 100, block=block)
        assert [g.members.tolist() for g in got] == [g.members.tolist() for g in reference]


def test_build_characters_table():
    emb = unit([1, 0], [0, 1], [1, 0.05], [0.05, 1], [1, 0.1])
    faces = pd.DataFrame(
        {
            "movie": "m",
            "frame_idx": [0, 50, 100, 150, 200],
            "path": [f"frames/m/{i}.jpg" for i in range(5)],
            "width": 64,
            "height": 48,
            "bbox": [[0.0, 0.0, 10.0, 10.0]] * 5,
            "kps": [[0.0] * 10] * 5,
            "embedding": list(emb),
            "embedding_raw_norm": 20.0,
            "identity_embedding": list(emb),
        }
    )
    df = build_characters(faces, CharactersParams(similarity_threshold=0.9, min_frames=3))
    assert df["frame_idx"].tolist() == [0, 100, 200]
    assert df["rank"].tolist() == [0, 1, 2]
    assert (df["character_id"] == 0).all()
    assert build_characters(faces.iloc[:0], CharactersParams()).empty


def test_no_character_reason_gives_the_numbers():
    faces = pd.DataFrame({"identity_embedding": list(unit([1, 0], [0, 1], [1, 0.05], [0.05, 1]))})
    params = CharactersParams(similarity_threshold=0.9, min_frames=3)
    assert build_characters(faces.assign(frame_idx=range(4)), params).empty
    assert no_character_reason(1, faces.iloc[:1], params) == (
        "no character: 1 frame kept, 1 with a face; a character needs 3 (characters.min_frames)"
    )
    assert no_character_reason(6, faces, params) == (
        "no character: 6 frames kept, 4 with a face, at most 2 of one face (similarity >= 0.9, "
        "characters.similarity_threshold); a character needs 3 (characters.min_frames)"
    )
