"""What each column of the stage tables and the triplet manifest holds: the descriptions
Dagster shows in an asset's column schema (`assets.stage.table_metadata`). A column means the
same in every table that has it, except where `STAGE_COLUMNS` says otherwise."""

from __future__ import annotations

COLUMNS = {
    "movie": "partition key: the movie file's stem, slugified",
    "frame_idx": "frame number in the movie (0-based, decode order)",
    "pts_s": "presentation time of the frame in the movie, in seconds",
    "path": "the frame's JPEG, relative to the data root",
    "width": "frame width in pixels",
    "height": "frame height in pixels",
    "bbox": "face box in frame pixels: x1, y1, x2, y2",
    "kps": "five face landmarks (eyes, nose, mouth corners), flattened x, y",
    "det_score": "face detector confidence, 0 to 1",
    "n_faces": "faces the detector found in the frame (the row keeps the chosen one)",
    "embedding": "the face's embedding: 512 floats, unit norm (grouping and the face branch)",
    "embedding_raw_norm": "the recogniser's norm of the embedding before normalisation",
    "identity_embedding": "the scoring recogniser's descriptor of the face (unit norm)",
    "character_id": "the character within its movie (a group of one person's faces)",
    "similarity": "cosine similarity of the face to its character's seed face",
    "rank": "position among the character's frames, most similar to the seed first",
    "mask_file": "the character's body mask (PNG), under the stage's folder of the movie",
    "area_fraction": "share of the frame the mask covers",
    "face_center_inside": "whether the face box's centre lies inside the mask",
    "sam_score": "the segmenter's predicted IoU of the mask",
    "person_box": "the person detector's box given to the segmenter (null: face point only)",
    "status": "ok, or skipped (the row is kept with its reason)",
    "skip_reason": "why the row was skipped; empty when ok",
    "keypoints": "133 whole-body keypoints (COCO-WholeBody), flattened x, y in frame pixels",
    "scores": "confidence of each of the 133 keypoints",
    "keypoints_found": "keypoints above the visibility threshold",
    "control_file": "the OpenPose-style pose image (PNG) the ControlNet reads",
    "caption": "the character's caption, written from the template",
    "words": "words in the caption",
    "prompt_version": "the caption prompt's version (captions.prompt_version)",
    "crop_file": "the reference's character crop (PNG), under the stage's folder of the movie",
    "crop_width": "crop width in pixels",
    "crop_height": "crop height in pixels",
    "triplet_id": "the triplet's folder under triplets/",
    "source": "movie (reference and target are frames of one movie) or single (one image)",
    "reference_frame": "frame index of the reference image",
    "target_frame": "frame index of the target image",
    "prompt": "the text prompt of the target (its caption)",
    "face_embedding": "the reference face's embedding (512 floats, unit norm)",
    "face_embedding_raw_norm": "the recogniser's norm of that embedding before normalisation",
    "reference_bbox": "face box in the reference image: x1, y1, x2, y2",
    "target_bbox": "face box in the target image: x1, y1, x2, y2",
    "identity_similarity": "scoring recogniser's similarity of the reference and target faces",
    "style": "photo or anime (singles/anime/, faces.anime.movies, or the anime detector's face)",
    "face_dropped": "true: training conditions on no face (an anime face, faces.anime.identity)",
    "mask_alpha_iou": "the target mask's IoU with the input's own alpha channel (sprites only)",
    "reference": "the reference image file, in the triplet's folder",
    "reference_crop": "the reference's character crop, in the triplet's folder",
    "target": "the target image file, in the triplet's folder",
    "target_mask": "the target's inpainting mask, in the triplet's folder",
    "target_pose": "the target's pose image, in the triplet's folder",
}
# Columns whose meaning differs in one table.
STAGE_COLUMNS = {
    "masks": {"prompt": "the segmenter's prompt: point (the face centre) or point+box"},
}


def column_description(stage: str, column: str) -> str:
    """What `column` of `stage`'s table holds; empty where it is not described."""
    return STAGE_COLUMNS.get(stage, {}).get(column) or COLUMNS.get(column, "")
