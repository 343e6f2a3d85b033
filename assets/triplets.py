"""The dataset (article 3.2.5): (reference, target, prompt) triplets, versioned with DVC.

For each character, one frame is the reference and a different frame the target, chosen
deterministically from the seed; the target's caption is the prompt. Each single-image ID under
singles/ becomes a triplet whose target is the horizontally flipped reference, and each
synthetic character's batch (`cameo synthetic build`, assets/synthetic.py) the triplets its
stages made. A triplet carries the reference image, its face embedding, the segmented reference
crop, the target image, target mask, target pose control image and prompt. A movie triplet also
records the identity similarity of its two frames: dlib's descriptors of the character's face
in the reference and in the target frame. Below `triplets.min_identity_similarity` the pair
shows two people (a mis-grouped character) and is dropped, so it never becomes a training pair;
the blocking check fails when more than `triplets.max_mismatched_fraction` of the movie pairs
fall below it. Everything that could not become a triplet is listed in skipped.parquet with the
file, stage and reason: unusable files under movies/ and singles/ (stage `inputs`), movies
whose stages did not all complete for the file present now (the first such stage, with its
error), and every frame, character, pair (stage `identity`, with its similarity) or single
image left out on the way. A bad movie or image never stops the others. Each movie's and
single image's triplets are kept between builds and reused while what they were made from is
unchanged (assets/triplet_cache.py).
"""

import json
import zlib
from dataclasses import fields, replace
from functools import partial
from pathlib import Path
from typing import NamedTuple

import dagster as dg
import numpy as np
import pandas as pd

from assets.contact_sheet import markdown_preview, triplet_sheet
from assets.identity import STAGE as IDENTITY
from assets.identity import (
    identity_expectation,
    identity_similarity,
    mismatch_reason,
    movie_pairs,
)
from assets.params import DatasetParams, TripletsParams
from assets.quality import check_result
from assets.singles import single_triplet
from assets.stage import (
    PRIORS_MODULE,
    describe_error,
    incomplete_stage,
    read_status,
    table_metadata,
)
from assets.synthetic import SOURCE as SYNTHETIC
from assets.synthetic import collect_synthetic
from assets.triplet import FILES, SKIPPED_COLUMNS, Triplet, skipped_record, write_triplet
from assets.triplet_cache import TripletCache, movie_fingerprint, single_fingerprint
from core.io import atomic_path, load_rgb, read_table, write_json
from core.layout import DataLayout, SkippedInput
from core.versioning import dvc_md5, source_version
from perception.anime_faces import STYLES
from perception.captions import caption_problems
from perception.faces import DlibFaceAnalyzer
from perception.params import CaptionsParams
from perception.priors import Priors

# The entry modules of the asset's code version: this one, and the perception resource's, whose
# models make the single images' triplets.
TRIPLETS_CODE_MODULES = (__name__, PRIORS_MODULE)
TRIPLETS_CODE_VERSION = source_version(*TRIPLETS_CODE_MODULES)


def _rng(seed: int, *key: object) -> np.random.Generator:
    # A stable per-character stream: the same seed picks the same frames whatever else changes.
    return np.random.default_rng([seed, zlib.crc32(repr(key).encode())])


def movie_triplets(
    layout: DataLayout, movie: str, params: TripletsParams, recogniser: DlibFaceAnalyzer
) -> tuple[list[Triplet], list[dict]]:
    """One triplet per character of `movie` whose two frames show one person, plus every frame,
    character or pair skipped on the way."""
    characters = read_table(layout.table("characters", movie))
    masks = read_table(layout.table("masks", movie))
    poses = read_table(layout.table("poses", movie))
    captions = read_table(layout.table("captions", movie))
    crops = read_table(layout.table("references", movie))
    skipped = [
        skipped_record("movie", movie, r.character_id, r.frame_idx, stage, r.skip_reason)
        for stage, table in (("masks", masks), ("poses", poses), ("captions", captions))
        for r in table[table["status"] != "ok"].itertuples(index=False)
    ]
    if characters.empty:  # said, so that a movie without characters is not a silent drop
        reason = read_status(layout, "characters", movie)["warning"]  # why, with the numbers
        skipped.append(skipped_record("movie", movie, None, None, "characters", reason))
    usable_targets = captions[captions["status"] == "ok"].merge(
        poses[["character_id", "frame_idx", "control_file", "mask_file"]],
        on=["character_id", "frame_idx"],
    )
    triplets = []
    for cid, group in characters.groupby("character_id"):
        refs = crops[crops["character_id"] == cid]
        targets = usable_targets[usable_targets["character_id"] == cid]
        pairs = [(r, t) for r in refs["frame_idx"] for t in targets["frame_idx"] if r != t]
        if not pairs:
            skipped.append(
                skipped_record(
                    "movie",
                    movie,
                    int(cid),
                    None,
                    "triplets",
                    f"no (reference, target) pair: {len(refs)} reference crops, "
                    f"{len(targets)} captioned targets",
                )
            )
            continue
        ref_frame, target_frame = pairs[_rng(params.seed, movie, int(cid)).integers(len(pairs))]
        ref = group[group["frame_idx"] == ref_frame].iloc[0]
        target = targets[targets["frame_idx"] == target_frame].iloc[0]
        target_row = group[group["frame_idx"] == target_frame].iloc[0]
        crop_file = refs.loc[refs["frame_idx"] == ref_frame, "crop_file"].iloc[0]
        reference_image = load_rgb(layout.root / ref["path"])
        target_image = load_rgb(layout.root / target_row["path"])
        similarity = identity_similarity(
            recogniser, reference_image, ref["bbox"], target_image, target_row["bbox"]
        )
        if similarity < params.min_identity_similarity:
            reason = mismatch_reason(similarity, int(ref_frame), int(target_frame), params)
            skipped.append(
                skipped_record("movie", movie, int(cid), int(target_frame), IDENTITY, reason)
                | {"identity_similarity": similarity}
            )
            continue
        triplets.append(
            Triplet(
                triplet_id=f"{movie}-c{int(cid):04d}",
                source="movie",
                movie=movie,
                character_id=int(cid),
                reference_frame=int(ref_frame),
                target_frame=int(target_frame),
                prompt=target["caption"],
                face_embedding=[float(v) for v in ref["embedding"]],
                face_embedding_raw_norm=float(ref["embedding_raw_norm"]),
                identity_similarity=similarity,
                reference_bbox=[float(v) for v in ref["bbox"]],
                target_bbox=[float(v) for v in target_row["bbox"]],
                images={
                    "reference.png": reference_image,
                    "reference_crop.png": load_rgb(
                        layout.stage_dir("references", movie) / crop_file
                    ),
                    "target.png": target_image,
                    "target_mask.png": load_rgb(
                        layout.stage_dir("masks", movie) / target["mask_file"]
                    ),
                    "target_pose.png": load_rgb(
                        layout.stage_dir("poses", movie) / target["control_file"]
                    ),
                },
            )
        )
    return triplets, skipped


def write_manifest(rows: list[dict], skipped: list[dict], out_dir: Path, summary: dict):
    """manifest.parquet, skipped.parquet and dataset.json beside the triplets' folders."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = [f.name for f in fields(Triplet) if f.name != "images"]
    manifest = pd.DataFrame(rows, columns=columns + [n.removesuffix(".png") for n in FILES])
    manifest.to_parquet(out_dir / "manifest.parquet", index=False)
    pd.DataFrame(skipped, columns=SKIPPED_COLUMNS).to_parquet(
        out_dir / "skipped.parquet", index=False
    )
    (out_dir / "dataset.json").write_text(
        json.dumps({**summary, "triplets": len(manifest), "skipped": len(skipped)}, indent=2)
    )
    return manifest


def triplets_expectations(params: TripletsParams) -> list:
    import great_expectations as gx

    e = gx.expectations
    return [
        e.ExpectTableRowCountToBeBetween(min_value=1),
        e.ExpectColumnValuesToBeUnique(column="triplet_id"),
        e.ExpectColumnValuesToBeInSet(column="distinct_frames", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="prompt_ok", value_set=[True]),
        e.ExpectColumnValuesToBeBetween(column="embedding_norm", min_value=0.999, max_value=1.001),
        e.ExpectColumnValuesToBeInSet(column="files_exist", value_set=[True]),
        identity_expectation(params),
        # Null (no alpha channel) everywhere but on sprites.
        e.ExpectColumnValuesToBeBetween(
            column="mask_alpha_iou", min_value=params.min_mask_alpha_iou, max_value=1.0
        ),
    ]


def check_triplets(
    manifest: pd.DataFrame,
    skipped: pd.DataFrame,
    root: Path,
    captions: CaptionsParams,
    params: TripletsParams,
):
    """The triplets' suite over one row per triplet, then one row per movie pair with its
    identity similarity (each row null in the other's columns; GX skips nulls)."""
    triplet_rows = pd.DataFrame(
        {
            "triplet_id": manifest["triplet_id"],
            # A movie triplet's target is another frame; a single's is the flipped image.
            "distinct_frames": (manifest["reference_frame"] != manifest["target_frame"])
            | (manifest["source"] == "single"),
            "prompt_ok": [
                not caption_problems(p, captions.min_words, captions.max_words)
                for p in manifest["prompt"]
            ],
            "embedding_norm": [float(np.linalg.norm(e)) for e in manifest["face_embedding"]],
            "mask_alpha_iou": manifest["mask_alpha_iou"],
            "files_exist": [
                all((root / row[n.removesuffix(".png")]).is_file() for n in FILES)
                for _, row in manifest.iterrows()
            ],
        }
    )
    view = pd.concat([triplet_rows, movie_pairs(manifest, skipped)], ignore_index=True)
    return check_result("triplets_expectations", view, triplets_expectations(params), "triplets")


def _input_skip(source: str, skipped: SkippedInput) -> dict:
    name = skipped.path.name
    return skipped_record(source, name, None, None, "inputs", skipped.reason, name)


def _movie_rows(
    layout: DataLayout,
    movie: str,
    video: Path,
    params: DatasetParams,
    priors: Priors,
    out_dir: Path,
) -> tuple[list[dict], list[dict]]:
    """A complete movie's triplets written into `out_dir`: their manifest rows, and the skip
    records of whatever was left out on the way."""
    found, lost = movie_triplets(layout, movie, params.triplets, priors.dlib_faces())
    style = params.faces.anime.style_of(movie)
    drop = params.faces.anime.drops_face(style)
    rows = [write_triplet(replace(t, style=style, face_dropped=drop), out_dir) for t in found]
    return rows, [{**s, "file": video.name} for s in lost]


def _single_rows(
    single_id: str, path: Path, style: str, priors: Priors, params: DatasetParams, out_dir: Path
) -> tuple[list[dict], list[dict]]:
    """A single image's triplet written into `out_dir` (its manifest row), or the record of
    why it is none."""
    triplet, stage, reason = single_triplet(single_id, path, style, priors, params)
    if triplet is None:
        return [], [skipped_record("single", path.name, None, None, stage, reason, path.name)]
    return [write_triplet(triplet, out_dir)], []


class BuiltTriplets(NamedTuple):
    """What a build of the triplets made: the manifest, the skip records, and the units
    (`movie-<key>`, `single-<id>`) whose triplets were kept from the last build or made anew."""

    manifest: pd.DataFrame
    skipped: list[dict]
    kept: list[str]
    made: list[str]


def build_triplets(
    layout: DataLayout, priors: Priors, params: DatasetParams, out_dir: Path, log=None
) -> BuiltTriplets:
    """Every complete movie's, every single's and every synthetic character's triplets from
    the files under movies/, singles/ and synthetic/ now, written into `out_dir` as they are
    made (one movie's images in memory at a time). Whatever is left out is in the returned
    skip records, each also logged."""
    seed = params.triplets.seed
    movies, skipped_movies = layout.scan_movies()
    singles, skipped_singles = layout.scan_singles()
    rows: list[dict] = []
    skipped = [_input_skip("movie", s) for s in skipped_movies]
    skipped += [_input_skip("single", s) for s in skipped_singles]
    cache = TripletCache(layout.triplets_cache_dir)
    used = []
    for movie, video in movies.items():
        if incomplete := incomplete_stage(layout, movie, video, params):
            stage, reason = incomplete
            skipped.append(skipped_record("movie", movie, None, None, stage, reason, video.name))
            continue
        unit = f"movie-{movie}"
        make = partial(_movie_rows, layout, movie, video, params, priors, out_dir)
        try:
            fingerprint = movie_fingerprint(layout, movie, video, TRIPLETS_CODE_VERSION, params)
            found, lost = cache.kept_or_made(unit, fingerprint, out_dir, make)
        except Exception as e:  # one movie's bad files (e.g. removed by hand) stop only it
            error = describe_error(e)
            skipped.append(
                skipped_record("movie", movie, None, None, "triplets", error, video.name)
            )
            continue
        rows += found
        skipped += lost
        used.append(movie)
    for single_id, path in singles.items():
        unit = f"single-{single_id}"
        style = layout.single_style(path)
        make = partial(_single_rows, single_id, path, style, priors, params, out_dir)
        try:
            fingerprint = single_fingerprint(path, style, TRIPLETS_CODE_VERSION, params)
            found, lost = cache.kept_or_made(unit, fingerprint, out_dir, make)
        except Exception as e:  # an image a model cannot take stops only that image
            error = describe_error(e)
            skipped.append(
                skipped_record("single", path.name, None, None, "singles", error, path.name)
            )
            continue
        rows += found
        skipped += lost
    cache.prune()
    synthetic_rows, synthetic_skipped = collect_synthetic(layout, out_dir)
    rows += synthetic_rows
    skipped += synthetic_skipped
    if log is not None:
        log.info(
            f"kept from the last build: the triplets of {len(cache.taken)} movies and single "
            f"images; made anew: {', '.join(cache.made) or 'none'}"
        )
        for s in skipped:
            if s["stage"] == IDENTITY:  # a mis-grouped character: worth a look
                log.warning(f"dropped {s['movie']} character {s['character_id']}: {s['reason']}")
            elif s["character_id"] is None and s["frame_idx"] is None:
                log.warning(f"skipped {s['file'] or s['movie']} at {s['stage']}: {s['reason']}")
    summary = {
        "seed": seed,
        "movies": used,
        "singles": [p.name for p in singles.values()],
        "synthetic": layout.synthetic_characters(),
        "prompt_version": params.captions.prompt_version,
        "profile": params.profile,
    }
    manifest = write_manifest(rows, skipped, out_dir, summary)
    return BuiltTriplets(manifest, skipped, cache.taken, cache.made)


def dataset_metrics(layout: DataLayout, manifest: pd.DataFrame, skipped: list[dict]) -> dict:
    """The counts `dvc metrics show` / `dvc exp show` compare: triplets by source, characters
    found in the movies used, and what was skipped, by stage."""
    used = sorted(set(manifest.loc[manifest["source"] == "movie", "movie"]))
    characters = sum(
        read_table(layout.table("characters", movie))["character_id"].nunique() for movie in used
    )
    by_stage = pd.Series([s["stage"] for s in skipped], dtype=str).value_counts()
    return {
        "triplets": len(manifest),
        "from_movies": int((manifest["source"] == "movie").sum()),
        "from_singles": int((manifest["source"] == "single").sum()),
        "from_synthetic": int((manifest["source"] == SYNTHETIC).sum()),
        "by_style": {style: int((manifest["style"] == style).sum()) for style in STYLES},
        "movies": len(used),
        "characters": int(characters),
        "skipped": {"total": len(skipped), **{k: int(v) for k, v in sorted(by_stage.items())}},
    }


# Rebuilt (automation) once the movie stages of a sensor run finished: without waiting for
# every movie, since a broken file's partition may never materialise.
SYNC_WITH_MOVIES = (
    (
        dg.AutomationCondition.missing().newly_true() | dg.AutomationCondition.any_deps_updated()
    ).since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
)


@dg.asset(
    # synthetic_triplets: defined in the code location's training half (its generator is
    # training code); the dataset's definitions alone see it as an external asset.
    deps=["captions", "references", "synthetic_triplets"],
    required_resource_keys={"data", "params", "perception"},
    group_name="dataset",
    kinds={"dvc"},
    code_version=TRIPLETS_CODE_VERSION,
    automation_condition=SYNC_WITH_MOVIES,
)
def triplets(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """The (reference, target, prompt) dataset in `triplets/`, DVC-tracked; its DVC md5 is the
    dataset version a training run names. Its counts are DVC metrics (`metrics.json`)."""
    layout = context.resources.data.layout
    params = context.resources.params.values
    layout.clean_stale_temps()
    with atomic_path(layout.triplets_dir) as tmp_dir:
        built = build_triplets(
            layout, context.resources.perception.priors, params, tmp_dir, context.log
        )
    manifest, skipped = built.manifest, built.skipped
    version = dvc_md5(layout.triplets_dir)
    sheet = triplet_sheet(manifest, layout.triplets_dir)
    sheet_path = layout.root / "triplets.contact_sheet.jpg"
    with atomic_path(sheet_path) as tmp:
        sheet.save(tmp, format="JPEG", quality=90)
    metrics = dataset_metrics(layout, manifest, skipped)
    write_json(metrics, layout.metrics_file)
    movie_rows = manifest[manifest["source"] == "movie"]
    return dg.MaterializeResult(
        metadata={
            "dvc_md5": version,
            "triplets": len(manifest),
            "from_movies": metrics["from_movies"],
            "from_singles": metrics["from_singles"],
            "from_synthetic": metrics["from_synthetic"],
            "by_style": dg.MetadataValue.json(metrics["by_style"]),
            # Target masks against the inputs' own alpha channels, where they have one (sprites)
            "mask_alpha_iou_mean": float(manifest["mask_alpha_iou"].mean())
            if manifest["mask_alpha_iou"].notna().any()
            else None,
            "skipped_by_stage": dg.MetadataValue.json(metrics["skipped"]),
            # Movies and single images whose triplets the last build had made, unchanged since
            "kept_from_last_build": len(built.kept),
            "made_anew": dg.MetadataValue.json(built.made),
            # dlib's similarity of each kept movie triplet's two frames; the dropped ones are in
            # skipped.parquet (stage identity).
            "identity_similarity": dg.MetadataValue.json(
                {
                    r.triplet_id: round(float(r.identity_similarity), 4)
                    for r in movie_rows.itertuples()
                }
            ),
            "manifest": dg.MetadataValue.path(str(layout.triplets_dir / "manifest.parquet")),
            "contact_sheet": dg.MetadataValue.path(str(sheet_path)),
            "preview": dg.MetadataValue.md(markdown_preview(sheet)),
            **table_metadata(layout.triplets_dir / "manifest.parquet", "triplets"),
        },
        data_version=dg.DataVersion(version),
    )


@dg.asset_check(
    asset=triplets,
    name="triplets_expectations",
    blocking=True,
    required_resource_keys={"data", "params"},
)
def triplets_check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """Distinct reference/target, prompts follow the template, unit face embeddings, every file
    present, sprites' masks at least `triplets.min_mask_alpha_iou` IoU with their alpha, and at
    most `triplets.max_mismatched_fraction` of the movie pairs below
    `triplets.min_identity_similarity` (the dropped ones included)."""
    layout = context.resources.data.layout
    manifest = read_table(layout.triplets_dir / "manifest.parquet")
    skipped = read_table(layout.triplets_dir / "skipped.parquet")
    values = context.resources.params.values
    return check_triplets(manifest, skipped, layout.triplets_dir, values.captions, values.triplets)
