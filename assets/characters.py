"""Stage 3, grouping distinct characters (article 2.1.3).

Frames are taken in order; the first frame not yet in a group seeds a new group, and every
ungrouped frame whose cosine similarity to the seed reaches the threshold joins it (the faces'
`identity_embedding`: the mining recogniser's, `faces.recogniser`, on whose scale
`characters.similarity_threshold` is). A group's
frames are ordered by descending similarity to its seed. Groups smaller than the minimum are
dropped; groups larger than the maximum keep their most similar frames.
"""

from dataclasses import dataclass

import dagster as dg
import numpy as np
import pandas as pd

from assets.contact_sheet import character_contact_sheet, markdown_preview
from assets.params import CharactersParams
from assets.quality import check_result
from assets.stage import MovieStage, movie_asset, movie_check
from core.io import atomic_path, read_table, write_table


@dataclass(frozen=True)
class CharacterGroup:
    """Row positions of one character's frames, most similar to the seed first."""

    members: np.ndarray
    similarity: np.ndarray


def group_characters(
    embeddings: np.ndarray,
    threshold: float,
    min_frames: int,
    max_frames: int,
    block: int = 256,
) -> list[CharacterGroup]:
    """Greedy threshold grouping of unit embeddings, as the article describes.

    Vectorised: similarities of a block of candidate seeds to every still-ungrouped frame
    come from one matrix product; the seeds of a block are then resolved in order with
    boolean masks. Ties in similarity keep frame order.
    """
    if min_frames < 1 or max_frames < min_frames:
        raise ValueError(f"need 1 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
    embeddings = np.asarray(embeddings, dtype=np.float32)
    n = len(embeddings)
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    remaining = np.arange(n)  # ungrouped frames, in frame order
    groups: list[CharacterGroup] = []
    while len(remaining):
        seeds = remaining[:block]
        similarity = unit[seeds] @ unit[remaining].T  # (seeds, remaining)
        free = np.ones(len(remaining), dtype=bool)
        for seed in range(len(seeds)):  # a seed's row and its position in `remaining` agree
            if not free[seed]:
                continue
            joined = free & (similarity[seed] >= threshold)
            joined[seed] = True  # a seed always belongs to its own group
            positions = np.flatnonzero(joined)
            positions = positions[np.argsort(-similarity[seed, positions], kind="stable")]
            groups.append(
                CharacterGroup(
                    members=remaining[positions],
                    similarity=similarity[seed, positions].astype(np.float32),
                )
            )
            free &= ~joined
        remaining = remaining[free]
    return [
        CharacterGroup(g.members[:max_frames], g.similarity[:max_frames])
        for g in groups
        if len(g.members) >= min_frames
    ]


def build_characters(faces: pd.DataFrame, params: CharactersParams) -> pd.DataFrame:
    """The characters table: one row per (character, frame), rank 0 = the group's seed."""
    columns = [
        "movie",
        "character_id",
        "frame_idx",
        "similarity",
        "rank",
        "path",
        "width",
        "height",
        "bbox",
        "kps",
        "embedding",
        "embedding_raw_norm",
    ]
    if faces.empty:
        return pd.DataFrame(columns=columns)
    faces = faces.sort_values("frame_idx", kind="stable").reset_index(drop=True)
    groups = group_characters(
        np.array(faces["identity_embedding"].tolist(), dtype=np.float32),
        params.similarity_threshold,
        params.min_frames,
        params.max_frames,
    )
    parts = [
        faces.iloc[g.members].assign(
            character_id=cid, similarity=g.similarity, rank=np.arange(len(g.members))
        )
        for cid, g in enumerate(groups)
    ]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]


def _frames(count: int) -> str:
    return f"{count} frame{'' if count == 1 else 's'}"


def no_character_reason(frames_kept: int, faces: pd.DataFrame, params: CharactersParams) -> str:
    """Why a movie's faces gave no character, with the numbers: fewer frames with a face than
    `min_frames`, or no face seen in `min_frames` of them."""
    counts = f"{_frames(frames_kept)} kept, {len(faces)} with a face"
    need = f"a character needs {params.min_frames} (characters.min_frames)"
    if len(faces) < params.min_frames:
        return f"no character: {counts}; {need}"
    groups = group_characters(
        np.array(faces["identity_embedding"].tolist(), dtype=np.float32),
        params.similarity_threshold,
        1,
        params.max_frames,
    )
    largest = max(len(g.members) for g in groups)
    return (
        f"no character: {counts}, at most {largest} of one face (similarity >= "
        f"{params.similarity_threshold}, characters.similarity_threshold); {need}"
    )


def characters_expectations(params: CharactersParams) -> list:
    import great_expectations as gx

    e = gx.expectations
    return [
        e.ExpectColumnValuesToBeUnique(column="frame_idx"),
        e.ExpectColumnValuesToBeBetween(
            column="group_size", min_value=params.min_frames, max_value=params.max_frames
        ),
        e.ExpectColumnValuesToBeBetween(
            column="similarity", min_value=params.similarity_threshold - 1e-4, max_value=1.0001
        ),
        e.ExpectColumnValuesToBeInSet(column="seed_first", value_set=[True]),
    ]


def check_characters(df: pd.DataFrame, params: CharactersParams) -> dg.AssetCheckResult:
    sizes = df.groupby("character_id")["frame_idx"].transform("size")
    first_rank = df.groupby("character_id")["rank"].transform("min")
    view = df[["character_id", "frame_idx", "similarity", "rank"]].assign(
        group_size=sizes, seed_first=(first_rank == 0)
    )
    return check_result(
        "characters_expectations", view, characters_expectations(params), "characters"
    )


@movie_asset(group="identity_mining", kinds={"numpy"})
def characters(context: dg.AssetExecutionContext, stage: MovieStage) -> dg.MaterializeResult:
    """Frames grouped into distinct characters, in `characters/{movie}.parquet`."""
    layout, movie = stage.layout, stage.movie
    params = stage.params.characters
    faces_df = read_table(layout.table("faces", movie))
    df = build_characters(faces_df, params)
    table = layout.table("characters", movie)
    write_table(df, table)
    sheet = character_contact_sheet(df, layout.root)
    sheet_path = layout.contact_sheet("characters", movie)
    with atomic_path(sheet_path) as tmp:
        sheet.save(tmp, format="JPEG", quality=90)
    sizes = df.groupby("character_id").size()
    context.log.info(f"{movie}: {len(sizes)} characters from {len(faces_df)} face frames")
    # Said in the build's output, the stage's record and the dataset's skipped list: a movie
    # without characters is otherwise a silent `ok` with no triplets.
    warning = ""
    if df.empty:
        frames_kept = len(read_table(layout.table("frames", movie)))
        warning = no_character_reason(frames_kept, faces_df, params)
        context.log.warning(f"{movie}: {warning}")
    return dg.MaterializeResult(
        metadata={
            "characters": len(sizes),
            "warning": warning,
            "frames_grouped": len(df),
            "frames_in": len(faces_df),
            "group_sizes": dg.MetadataValue.json({str(k): int(v) for k, v in sizes.items()}),
            "table": dg.MetadataValue.path(str(table)),
            "contact_sheet": dg.MetadataValue.path(str(sheet_path)),
            "preview": dg.MetadataValue.md(markdown_preview(sheet)),
        },
    )


@movie_check(characters)
def characters_check(stage: MovieStage) -> dg.AssetCheckResult:
    """Group sizes within [min, max], no frame in two groups, similarities above threshold."""
    df = read_table(stage.layout.table("characters", stage.movie))
    return check_characters(df, stage.params.characters)
