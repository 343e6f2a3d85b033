"""Stage 6, captioning (article 2.3): a 100–150-word description of every target frame.

The VLM gets the article's prompt template (a versioned file in perception/prompts). A
caption that breaks the template's rules (word range, banned openings, no gender word) is
kept but marked skipped, with the rules it broke.
"""

import dagster as dg
import pandas as pd

from assets.quality import check_result
from assets.stage import MovieStage, movie_asset, movie_check
from core.io import load_rgb, read_table, write_table
from perception.captions import BANNED_OPENINGS, GENDER_WORDS, caption_problems
from perception.params import CaptionsParams


def caption_frames(poses: pd.DataFrame, root, captioner, params: CaptionsParams) -> pd.DataFrame:
    """One caption per frame with a usable pose (the frames that can be targets)."""
    targets = poses[poses["status"] == "ok"].reset_index(drop=True)
    captions: list[str] = []
    for start in range(0, len(targets), params.batch_size):
        batch = targets.iloc[start : start + params.batch_size]
        captions += captioner.caption_batch([load_rgb(root / p) for p in batch["path"]])
    problems = [caption_problems(c, params.min_words, params.max_words) for c in captions]
    return pd.DataFrame(
        {
            "movie": targets["movie"],
            "character_id": targets["character_id"],
            "frame_idx": targets["frame_idx"],
            "caption": captions,
            "words": [len(c.split()) for c in captions],
            "prompt_version": params.prompt_version,
            "status": ["skipped" if p else "ok" for p in problems],
            "skip_reason": ["; ".join(p) for p in problems],
        },
        columns=[
            "movie",
            "character_id",
            "frame_idx",
            "caption",
            "words",
            "prompt_version",
            "status",
            "skip_reason",
        ],
    )


def captions_expectations(params: CaptionsParams) -> list:
    import great_expectations as gx

    e = gx.expectations
    openings = "|".join(o.lower() for o in BANNED_OPENINGS)
    gender = "|".join(GENDER_WORDS)
    return [
        e.ExpectColumnValuesToBeInSet(column="status", value_set=["ok", "skipped"]),
        e.ExpectColumnValuesToBeInSet(column="reason_matches_status", value_set=[True]),
        e.ExpectColumnValuesToBeBetween(
            column="ok_words", min_value=params.min_words, max_value=params.max_words
        ),
        e.ExpectColumnValuesToNotMatchRegex(column="ok_caption_lower", regex=rf"^({openings})"),
        e.ExpectColumnValuesToMatchRegex(column="ok_caption_lower", regex=rf"\b({gender})\b"),
        e.ExpectCompoundColumnsToBeUnique(column_list=["character_id", "frame_idx"]),
    ]


def check_captions(df: pd.DataFrame, params: CaptionsParams) -> dg.AssetCheckResult:
    ok = df["status"] == "ok"
    view = df[["character_id", "frame_idx", "status"]].assign(
        reason_matches_status=(df["skip_reason"] == "") == ok,
        ok_words=df["words"].where(ok),
        # astype: an empty table's caption column has no string dtype for `.str`.
        ok_caption_lower=df["caption"].astype(str).str.lower().where(ok),
    )
    return check_result("captions_expectations", view, captions_expectations(params), "captions")


@movie_asset(
    group="dataset",
    kinds={"full": {"transformers"}, "tiny": {"python"}},
    gpu=True,
)
def captions(context: dg.AssetExecutionContext, stage: MovieStage) -> dg.MaterializeResult:
    """Captions of every candidate target frame, in `captions/{movie}.parquet`."""
    layout, movie = stage.layout, stage.movie
    params = stage.params.captions
    poses_df = read_table(layout.table("poses", movie))
    df = caption_frames(
        poses_df, layout.root, context.resources.perception.priors.captioner(), params
    )
    write_table(df, layout.table("captions", movie))
    return dg.MaterializeResult(
        metadata={
            "captions": len(df),
            "usable": int((df["status"] == "ok").sum()),
            "prompt_version": params.prompt_version,
            "mean_words": float(df["words"].mean()) if len(df) else 0.0,
            "example": dg.MetadataValue.text(df["caption"].iloc[0] if len(df) else ""),
            "table": dg.MetadataValue.path(str(layout.table("captions", movie))),
        },
    )


@movie_check(captions)
def captions_check(stage: MovieStage) -> dg.AssetCheckResult:
    """Usable captions have 100-150 words, no banned opening, a gender word."""
    df = read_table(stage.layout.table("captions", stage.movie))
    return check_captions(df, stage.params.captions)
