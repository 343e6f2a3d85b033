"""Stage 5, pose extraction (article 3.2.3): 133 whole-body keypoints of the target character.

The pose model sees the masked frame, where only the target character is visible, with the
person box taken from the mask. The OpenPose-style control image that Pose-IdentityNet is
conditioned on is rendered at frame size. Frames where too few keypoints are found are
skipped, with the reason.
"""

import dagster as dg
import pandas as pd

from assets.contact_sheet import markdown_preview, pose_contact_sheet
from assets.quality import check_result
from assets.stage import MovieStage, movie_asset, movie_check, skipped_metadata
from core.io import atomic_path, load_rgb, read_table, save_image, write_table
from perception.params import PosesParams
from perception.pose import NUM_KEYPOINTS, draw_openpose, extract_poses


def estimate_poses(masks: pd.DataFrame, root, mask_dir, out_dir, estimator, params) -> pd.DataFrame:
    """One row per usable mask; a control image in `out_dir` for every pose found. The pose
    model sees `params.batch_size` crops per call."""
    out_dir.mkdir(parents=True, exist_ok=True)
    usable = masks[masks["status"] == "ok"]
    rows = []
    for start in range(0, len(usable), params.batch_size):
        batch = list(usable.iloc[start : start + params.batch_size].itertuples(index=False))
        images = [load_rgb(root / row.path) for row in batch]
        found = extract_poses(
            estimator,
            images,
            [load_rgb(mask_dir / row.mask_file)[..., 0] > 127 for row in batch],
            params.score_threshold,
            params.min_keypoints,
        )
        for row, image, (pose, reason) in zip(batch, images, found, strict=True):
            control_file = ""
            if pose is not None:
                control_file = f"{row.character_id:04d}_{row.frame_idx:08d}.png"
                save_image(
                    draw_openpose(pose, (image.shape[1], image.shape[0]), params.score_threshold),
                    out_dir / control_file,
                )
            rows.append(
                {
                    "movie": row.movie,
                    "character_id": row.character_id,
                    "frame_idx": row.frame_idx,
                    "path": row.path,
                    "mask_file": row.mask_file,
                    "keypoints": None if pose is None else pose.keypoints.reshape(-1).tolist(),
                    "scores": None if pose is None else pose.scores.tolist(),
                    "keypoints_found": 0
                    if pose is None
                    else int((pose.scores >= params.score_threshold).sum()),
                    "control_file": control_file,
                    "status": "skipped" if reason else "ok",
                    "skip_reason": reason,
                }
            )
    columns = [
        "movie",
        "character_id",
        "frame_idx",
        "path",
        "mask_file",
        "keypoints",
        "scores",
        "keypoints_found",
        "control_file",
        "status",
        "skip_reason",
    ]
    return pd.DataFrame(rows, columns=columns)


def poses_expectations(params: PosesParams) -> list:
    import great_expectations as gx

    e = gx.expectations
    return [
        e.ExpectColumnValuesToBeInSet(column="status", value_set=["ok", "skipped"]),
        e.ExpectColumnValuesToBeInSet(column="reason_matches_status", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="ok_keypoint_count", value_set=[NUM_KEYPOINTS]),
        e.ExpectColumnValuesToBeBetween(column="ok_found", min_value=params.min_keypoints),
        e.ExpectColumnValuesToBeInSet(column="ok_control_exists", value_set=[True]),
        e.ExpectCompoundColumnsToBeUnique(column_list=["character_id", "frame_idx"]),
    ]


def check_poses(df: pd.DataFrame, pose_dir, params: PosesParams) -> dg.AssetCheckResult:
    ok = df["status"] == "ok"
    view = df[["character_id", "frame_idx", "status"]].assign(
        reason_matches_status=(df["skip_reason"] == "") == ok,
        ok_keypoint_count=[
            len(s) if k else NUM_KEYPOINTS
            for s, k in zip(df["scores"].fillna("").tolist(), ok, strict=True)
        ],
        ok_found=df["keypoints_found"].where(ok),
        ok_control_exists=[
            (pose_dir / f).is_file() if k else True
            for f, k in zip(df["control_file"], ok, strict=True)
        ],
    )
    return check_result("poses_expectations", view, poses_expectations(params), "poses")


@movie_asset(group="dataset", kinds={"onnx"}, gpu=True)
def poses(context: dg.AssetExecutionContext, stage: MovieStage) -> dg.MaterializeResult:
    """Whole-body poses and OpenPose control images: `poses/{movie}/*.png`,
    `poses/{movie}.parquet`.

    Each character also gets a contact sheet (frames with mask and pose overlays).
    """
    layout, movie = stage.layout, stage.movie
    params = stage.params.poses
    masks_df = read_table(layout.table("masks", movie))
    mask_dir = layout.stage_dir("masks", movie)
    pose_dir = layout.stage_dir("poses", movie)
    estimator = context.resources.perception.priors.pose_estimator()
    with atomic_path(pose_dir) as tmp_dir:
        df = estimate_poses(masks_df, layout.root, mask_dir, tmp_dir, estimator, params)
        sheets = {}
        for cid, group in df.groupby("character_id"):
            sheet = pose_contact_sheet(group, layout.root, mask_dir, tmp_dir)
            sheet.save(tmp_dir / f"contact_sheet_{cid:04d}.jpg", quality=90)
            sheets[int(cid)] = sheet
    write_table(df, layout.table("poses", movie))
    metadata = {
        "poses": int((df["status"] == "ok").sum()),
        **skipped_metadata(df),
        "table": dg.MetadataValue.path(str(layout.table("poses", movie))),
    }
    for cid, sheet in sheets.items():
        metadata[f"contact_sheet_character_{cid}"] = dg.MetadataValue.path(
            str(pose_dir / f"contact_sheet_{cid:04d}.jpg")
        )
        metadata[f"preview_character_{cid}"] = dg.MetadataValue.md(markdown_preview(sheet))
    return dg.MaterializeResult(metadata=metadata)


@movie_check(poses)
def poses_check(stage: MovieStage) -> dg.AssetCheckResult:
    """133 keypoints and a control image for every pose found; skips say why."""
    layout, movie = stage.layout, stage.movie
    df = read_table(layout.table("poses", movie))
    return check_poses(df, layout.stage_dir("poses", movie), stage.params.poses)
