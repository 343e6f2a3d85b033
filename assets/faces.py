"""Stage 2, face detection (article 2.1.2): one representative face per frame.

Frames without faces are dropped. Where a frame has several faces, the one whose summed
cosine similarity to the other faces of the frame is lowest (the most distinctive) is kept.
Each face carries two embeddings: the profile's (`embedding`, what conditions the model:
antelopev2's ArcFace in `full`) and the mining recogniser's (`identity_embedding`, what picks
the distinctive face and groups characters): the same with `faces.recogniser: profile`,
dlib's descriptor of the same box with `faces.recogniser: dlib`. A movie listed in
`faces.anime.movies` is drawn in anime style: the anime detector finds its faces
(`perception.anime_faces`), whose embeddings were not shown to tell anime characters apart.
"""

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
from tqdm import tqdm

from assets.quality import check_result
from assets.stage import MovieStage, movie_asset, movie_check
from core.io import load_rgb, read_table, write_table
from perception.faces import EMBEDDING_DIM, DetectedFace, DlibFaceAnalyzer, FaceAnalyzer


def select_distinctive_face(embeddings: np.ndarray, areas: np.ndarray | None = None) -> int:
    """Index of the face with the lowest summed cosine similarity to the other faces.

    Ties (always the case with exactly two faces) go to the larger face, then to the
    earlier one.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if len(embeddings) == 0:
        raise ValueError("no faces to choose from")
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = unit @ unit.T
    summed = similarity.sum(axis=1) - np.diag(similarity)
    tied = np.flatnonzero(np.isclose(summed, summed.min(), rtol=0.0, atol=1e-6))
    if areas is None or len(tied) == 1:
        return int(tied[0])
    areas = np.asarray(areas, dtype=np.float64)
    # argmax returns the first maximum: the earlier face among equal areas.
    return int(tied[np.argmax(areas[tied])])


def _face_record(face: DetectedFace, identity: np.ndarray, n_faces: int) -> dict:
    return {
        "bbox": face.bbox.astype(np.float32).tolist(),
        "kps": face.kps.astype(np.float32).reshape(-1).tolist(),
        "det_score": float(face.det_score),
        "n_faces": n_faces,
        "embedding": face.embedding.astype(np.float32).tolist(),
        "embedding_raw_norm": float(face.raw_norm),
        "identity_embedding": identity.astype(np.float32).tolist(),
    }


def detect_faces(
    frames: pd.DataFrame,
    root: Path,
    analyzer: FaceAnalyzer,
    min_face_px: int = 24,
    progress: bool = False,
    recogniser: DlibFaceAnalyzer | None = None,
    batch_size: int = 1,
) -> pd.DataFrame:
    """One row per frame that has a face: the frame's columns plus the chosen face.

    The analyzer sees `batch_size` frames per call (`detect_batch`: one detector and one
    recogniser call on a GPU).

    Columns added: bbox (x1, y1, x2, y2), kps (5 points, flattened x, y), det_score,
    n_faces (faces found in the frame), embedding (512 floats, unit norm), embedding_raw_norm
    (the recogniser's raw norm), identity_embedding (unit norm: `recogniser`'s descriptor of
    the face's box, dlib's 128 floats, or without one the embedding again).
    """
    rows = []
    with tqdm(total=len(frames), disable=not progress) as bar:
        for start in range(0, len(frames), batch_size):
            batch = list(frames.iloc[start : start + batch_size].itertuples(index=False))
            images = [load_rgb(root / frame.path) for frame in batch]
            for frame, image, found in zip(
                batch, images, analyzer.detect_batch(images), strict=True
            ):
                faces = [
                    f
                    for f in found
                    if min(f.bbox[2] - f.bbox[0], f.bbox[3] - f.bbox[1]) >= min_face_px
                ]
                if not faces:
                    continue
                identities = np.stack(
                    [
                        recogniser.describe(image, f.bbox)[0] if recogniser else f.embedding
                        for f in faces
                    ]
                )
                chosen = select_distinctive_face(identities, np.array([f.area for f in faces]))
                record = _face_record(faces[chosen], identities[chosen], len(faces))
                rows.append({**frame._asdict(), **record})
            bar.update(len(batch))
    columns = [
        *frames.columns,
        "bbox",
        "kps",
        "det_score",
        "n_faces",
        "embedding",
        "embedding_raw_norm",
        "identity_embedding",
    ]
    return pd.DataFrame(rows, columns=columns)


def faces_expectations() -> list:
    import great_expectations as gx

    e = gx.expectations
    return [
        e.ExpectTableRowCountToBeBetween(min_value=1),
        e.ExpectColumnValuesToBeUnique(column="frame_idx"),
        e.ExpectColumnValuesToBeInSet(column="embedding_dim", value_set=[EMBEDDING_DIM]),
        e.ExpectColumnValuesToBeBetween(column="embedding_norm", min_value=0.999, max_value=1.001),
        e.ExpectColumnValuesToBeBetween(column="embedding_raw_norm", min_value=1e-6),
        e.ExpectColumnValuesToBeBetween(
            column="identity_embedding_norm", min_value=0.999, max_value=1.001
        ),
        e.ExpectColumnValuesToBeBetween(column="x1", min_value=-0.5),
        e.ExpectColumnValuesToBeBetween(column="y1", min_value=-0.5),
        e.ExpectColumnValuesToBeInSet(column="x2_inside", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="y2_inside", value_set=[True]),
        e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="x2", column_B="x1"),
        e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="y2", column_B="y1"),
        e.ExpectColumnValuesToBeBetween(column="det_score", min_value=0.0, max_value=1.0),
        e.ExpectColumnValuesToBeBetween(column="n_faces", min_value=1),
    ]


def check_faces(df: pd.DataFrame) -> dg.AssetCheckResult:
    boxes = np.array(df["bbox"].tolist(), dtype=np.float64).reshape(-1, 4)
    embeddings = [np.asarray(e, dtype=np.float64) for e in df["embedding"]]
    # Detectors may place a box up to half a pixel past the border.
    view = df[["frame_idx", "det_score", "n_faces", "embedding_raw_norm"]].assign(
        embedding_dim=[len(e) for e in embeddings],
        embedding_norm=[float(np.linalg.norm(e)) for e in embeddings],
        identity_embedding_norm=[
            float(np.linalg.norm(np.asarray(e, np.float64))) for e in df["identity_embedding"]
        ],
        x1=boxes[:, 0],
        y1=boxes[:, 1],
        x2=boxes[:, 2],
        y2=boxes[:, 3],
        x2_inside=boxes[:, 2] <= df["width"].to_numpy() + 0.5,
        y2_inside=boxes[:, 3] <= df["height"].to_numpy() + 0.5,
    )
    return check_result("faces_expectations", view, faces_expectations(), "faces")


@movie_asset(
    group="identity_mining",
    kinds={"full": {"insightface", "onnx"}, "tiny": {"scikit-image"}},
    gpu=True,
)
def faces(context: dg.AssetExecutionContext, stage: MovieStage) -> dg.MaterializeResult:
    """The most distinctive face of every frame that has one, in `faces/{movie}.parquet`."""
    layout, movie = stage.layout, stage.movie
    params = stage.params.faces
    frames_df = read_table(layout.table("frames", movie))
    priors = context.resources.perception.priors
    df = detect_faces(
        frames_df,
        layout.root,
        priors.face_analyzer_for(params.anime.style_of(movie)),
        params.min_face_px,
        recogniser=priors.dlib_faces() if params.recogniser == "dlib" else None,
        batch_size=params.batch_size,
    )
    table = layout.table("faces", movie)
    write_table(df, table)
    context.log.info(f"{movie}: faces in {len(df)} of {len(frames_df)} frames")
    return dg.MaterializeResult(
        metadata={
            "frames_in": len(frames_df),
            "frames_with_faces": len(df),
            "multi_face_frames": int((df["n_faces"] > 1).sum()),
            "table": dg.MetadataValue.path(str(table)),
        },
    )


@movie_check(faces)
def faces_check(stage: MovieStage) -> dg.AssetCheckResult:
    """Embeddings 512-d unit-norm, boxes inside the frame."""
    return check_faces(read_table(stage.layout.table("faces", stage.movie)))
