"""Stage 4, mask generation (article 2.2): the target character's segmentation mask.

SAM is prompted with the midpoint of the frame's face box, with multimask output, and the
mask with the largest area is kept. Optionally (the article's Note 1) the person box from a
detector that overlaps the face box most is given to SAM as a box prompt too. Masks that are
(nearly) empty, cover the whole frame or miss the face centre are kept on disk but marked
skipped, with the reason. A movie drawn in anime style (`faces.anime.movies`) is masked by the
anime segmenter instead (Note 2, `perception.anime_segmentation`), prompted by the same point.
"""

import dagster as dg
import numpy as np
import pandas as pd

from assets.quality import check_result
from assets.stage import MovieStage, movie_asset, movie_check, skipped_metadata
from core.io import atomic_path, load_rgb, read_table, save_image, write_table
from perception.params import MasksParams
from perception.segmentation import best_person_box


def mask_skip_reason(area_fraction: float, face_center_inside: bool, params: MasksParams) -> str:
    """Why a mask cannot be used ('' when it can)."""
    if area_fraction < params.min_area_fraction:
        return f"empty mask: area {area_fraction:.4f} < {params.min_area_fraction}"
    if area_fraction > params.max_area_fraction:
        return f"mask covers the frame: area {area_fraction:.3f} > {params.max_area_fraction}"
    if not face_center_inside:
        return "mask misses the face centre"
    return ""


def mask_iou(mask: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks of one image (0 when both are empty)."""
    union = np.logical_or(mask, truth).sum()
    return float(np.logical_and(mask, truth).sum() / union) if union else 0.0


def segment_characters(
    images: list[np.ndarray],
    face_bboxes: list,
    segmenter,
    person_boxes: list[np.ndarray | None],
    params: MasksParams,
) -> list[tuple[np.ndarray, dict]]:
    """The mask of the character whose face is `face_bboxes[i]` in `images[i]`, and its
    record, for every i; SAM's image encoder runs once over all the images."""
    points, boxes = [], []
    for face_bbox, people in zip(face_bboxes, person_boxes, strict=True):
        x1, y1, x2, y2 = (float(v) for v in face_bbox)
        points.append(((x1 + x2) / 2, (y1 + y2) / 2))
        boxes.append(None if people is None else best_person_box(people, np.asarray(face_bbox)))
    prompts = [None if box is None else tuple(float(v) for v in box) for box in boxes]
    segmented = []
    for result, point, box in zip(
        segmenter.segment_batch(images, points, prompts), points, boxes, strict=True
    ):
        height, width = result.mask.shape
        cx, cy = min(int(point[0]), width - 1), min(int(point[1]), height - 1)
        inside = bool(result.mask[cy, cx])
        reason = mask_skip_reason(result.area_fraction, inside, params)
        record = {
            "area_fraction": float(result.area_fraction),
            "face_center_inside": inside,
            "sam_score": float(result.score),
            "prompt": "point+box" if box is not None else "point",
            "person_box": None if box is None else [float(v) for v in box],
            "status": "skipped" if reason else "ok",
            "skip_reason": reason,
        }
        segmented.append((result.mask, record))
    return segmented


def segment_character(
    image: np.ndarray,
    face_bbox: np.ndarray,
    segmenter,
    person_boxes: np.ndarray | None,
    params: MasksParams,
) -> tuple[np.ndarray, dict]:
    """The mask of the character whose face is `face_bbox`, and its record."""
    return segment_characters([image], [face_bbox], segmenter, [person_boxes], params)[0]


def generate_masks(
    characters: pd.DataFrame,
    root,
    out_dir,
    segmenter,
    person_detector,
    params: MasksParams,
) -> pd.DataFrame:
    """One row (and one PNG in `out_dir`) per character frame; SAM's image encoder sees
    `params.batch_size` frames per call."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for start in range(0, len(characters), params.batch_size):
        batch = list(characters.iloc[start : start + params.batch_size].itertuples(index=False))
        images = [load_rgb(root / frame.path) for frame in batch]
        people = [
            None if person_detector is None else person_detector.detect(image) for image in images
        ]
        segmented = segment_characters(
            images, [frame.bbox for frame in batch], segmenter, people, params
        )
        for frame, (mask, record) in zip(batch, segmented, strict=True):
            name = f"{frame.character_id:04d}_{frame.frame_idx:08d}.png"
            save_image(mask.astype(np.uint8) * 255, out_dir / name)
            rows.append(
                {
                    "movie": frame.movie,
                    "character_id": frame.character_id,
                    "frame_idx": frame.frame_idx,
                    "path": frame.path,
                    "bbox": list(frame.bbox),
                    "mask_file": name,
                    **record,
                }
            )
    columns = [
        "movie",
        "character_id",
        "frame_idx",
        "path",
        "bbox",
        "mask_file",
        "area_fraction",
        "face_center_inside",
        "sam_score",
        "prompt",
        "person_box",
        "status",
        "skip_reason",
    ]
    return pd.DataFrame(rows, columns=columns)


def masks_expectations(params: MasksParams) -> list:
    import great_expectations as gx

    e = gx.expectations
    return [
        e.ExpectColumnValuesToBeInSet(column="status", value_set=["ok", "skipped"]),
        e.ExpectColumnValuesToBeInSet(column="reason_matches_status", value_set=[True]),
        e.ExpectColumnValuesToBeBetween(
            column="ok_area",
            min_value=params.min_area_fraction,
            max_value=params.max_area_fraction,
        ),
        e.ExpectColumnValuesToBeInSet(column="ok_face_center_inside", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="file_exists", value_set=[True]),
        e.ExpectCompoundColumnsToBeUnique(column_list=["character_id", "frame_idx"]),
    ]


def check_masks(df: pd.DataFrame, mask_dir, params: MasksParams) -> dg.AssetCheckResult:
    ok = df["status"] == "ok"
    view = df[["character_id", "frame_idx", "status"]].assign(
        reason_matches_status=(df["skip_reason"] == "") == ok,
        ok_area=df["area_fraction"].where(ok),
        ok_face_center_inside=df["face_center_inside"].where(ok, True),
        file_exists=[(mask_dir / name).is_file() for name in df["mask_file"]],
    )
    return check_result("masks_expectations", view, masks_expectations(params), "masks")


@movie_asset(group="dataset", kinds={"sam"}, gpu=True)
def masks(context: dg.AssetExecutionContext, stage: MovieStage) -> dg.MaterializeResult:
    """SAM masks of every character frame: `masks/{movie}/*.png`, `masks/{movie}.parquet`."""
    layout, movie = stage.layout, stage.movie
    params = stage.params.masks
    perception = context.resources.perception.priors
    characters_df = read_table(layout.table("characters", movie))
    detector = perception.person_detector() if params.person_box_prompt else None
    mask_dir = layout.stage_dir("masks", movie)
    with atomic_path(mask_dir) as tmp_dir:
        segmenter = perception.segmenter_for(stage.params.faces.anime.style_of(movie))
        df = generate_masks(characters_df, layout.root, tmp_dir, segmenter, detector, params)
    write_table(df, layout.table("masks", movie))
    return dg.MaterializeResult(
        metadata={
            "masks": len(df),
            "usable": int((df["status"] == "ok").sum()),
            **skipped_metadata(df),
            "prompt": "point+box" if params.person_box_prompt else "point",
            "mean_area_fraction": float(df["area_fraction"].mean()) if len(df) else 0.0,
            "table": dg.MetadataValue.path(str(layout.table("masks", movie))),
        },
    )


@movie_check(masks)
def masks_check(stage: MovieStage) -> dg.AssetCheckResult:
    """Usable masks within the area range and covering the face centre; skips say why."""
    layout, movie = stage.layout, stage.movie
    df = read_table(layout.table("masks", movie))
    return check_masks(df, layout.stage_dir("masks", movie), stage.params.masks)
