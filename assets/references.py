"""Reference crops: the segmented character (mask applied, background removed, cropped), the
image the body encoder sees."""

import dagster as dg
import numpy as np
import pandas as pd

from assets.params import ReferencesParams
from assets.quality import check_result
from assets.stage import MovieStage, movie_asset, movie_check
from core.io import atomic_path, load_rgb, read_table, save_image, write_table
from perception.pose import mask_box


def segment_reference(
    image: np.ndarray, mask: np.ndarray, params: ReferencesParams
) -> np.ndarray | None:
    """The character cut out of `image` by `mask` and cropped to its padded box."""
    box = mask_box(mask, pad=params.padding)
    if box is None:
        return None
    x1, y1, x2, y2 = (round(v) for v in box)
    cut = np.where(mask[..., None], image, np.uint8(params.background)).astype(np.uint8)
    return cut[y1:y2, x1:x2]


def crop_references(masks: pd.DataFrame, root, mask_dir, out_dir, params) -> pd.DataFrame:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for row in masks[masks["status"] == "ok"].itertuples(index=False):
        mask = load_rgb(mask_dir / row.mask_file)[..., 0] > 127
        crop = segment_reference(load_rgb(root / row.path), mask, params)
        if crop is None:
            continue
        name = f"{row.character_id:04d}_{row.frame_idx:08d}.png"
        save_image(crop, out_dir / name)
        rows.append(
            {
                "movie": row.movie,
                "character_id": row.character_id,
                "frame_idx": row.frame_idx,
                "crop_file": name,
                "crop_width": crop.shape[1],
                "crop_height": crop.shape[0],
            }
        )
    return pd.DataFrame(
        rows,
        columns=["movie", "character_id", "frame_idx", "crop_file", "crop_width", "crop_height"],
    )


def references_expectations() -> list:
    import great_expectations as gx

    e = gx.expectations
    return [
        e.ExpectColumnValuesToBeBetween(column="crop_width", min_value=1),
        e.ExpectColumnValuesToBeBetween(column="crop_height", min_value=1),
        e.ExpectColumnValuesToBeInSet(column="file_exists", value_set=[True]),
        e.ExpectCompoundColumnsToBeUnique(column_list=["character_id", "frame_idx"]),
    ]


@movie_asset(group="dataset", kinds={"numpy"})
def references(context: dg.AssetExecutionContext, stage: MovieStage) -> dg.MaterializeResult:
    """Segmented reference crops: `references/{movie}/*.png`, `references/{movie}.parquet`."""
    layout, movie = stage.layout, stage.movie
    params = stage.params.references
    masks_df = read_table(layout.table("masks", movie))
    crop_dir = layout.stage_dir("references", movie)
    with atomic_path(crop_dir) as tmp_dir:
        df = crop_references(
            masks_df, layout.root, layout.stage_dir("masks", movie), tmp_dir, params
        )
    write_table(df, layout.table("references", movie))
    return dg.MaterializeResult(
        metadata={
            "crops": len(df),
            "table": dg.MetadataValue.path(str(layout.table("references", movie))),
        },
    )


@movie_check(references)
def references_check(stage: MovieStage) -> dg.AssetCheckResult:
    """Every usable mask has a non-empty crop on disk."""
    df = read_table(stage.layout.table("references", stage.movie))
    crop_dir = stage.layout.stage_dir("references", stage.movie)
    view = df.assign(file_exists=[(crop_dir / f).is_file() for f in df["crop_file"]])
    return check_result("references_expectations", view, references_expectations(), "references")
