"""Single-image IDs (article 3.2.5): each image under singles/ is a reference, its horizontal
flip the target. About 30k of the article's 80k identities are such images, drawn in anime
style.

An image under singles/anime/ is anime, the others photographs; a photograph in which the
profile's face detector finds no face but the anime detector finds one is anime too
(`faces.anime.fallback`). An anime face conditions training only when `faces.anime.identity`
is `embedding`; otherwise the triplet's `face_dropped` tells training to drop it, as
classifier-free-guidance dropout does (docs/dataset.md, "Anime").
"""

import math
from pathlib import Path

import numpy as np

from assets.faces import select_distinctive_face
from assets.masks import mask_iou, segment_character
from assets.params import DatasetParams
from assets.references import segment_reference
from assets.triplet import Triplet, mask_image
from core.io import ImageReadError, load_rgb, read_alpha
from perception.anime_faces import no_face_reason
from perception.captions import caption_problems
from perception.faces import DetectedFace
from perception.pose import draw_openpose, extract_pose
from perception.priors import Priors

# The params sections a single image's triplet reads: its own (`images`, `references`) and
# those of the models its Priors run. Not `triplets` (the movies' pairs) nor the movie stages'
# own: drawing the movies' pairs with another seed keeps every single's triplet.
SINGLE_PARAMS = ("profile", "images", "faces", "masks", "poses", "captions", "references")


def main_face(image: np.ndarray, style: str, priors: Priors) -> tuple[DetectedFace | None, str]:
    """The image's character face (the most distinctive of those found) and the image's style
    (a photo becomes anime where only the anime detector finds a face: `faces.anime.fallback`);
    None where there is no face."""
    faces, style = priors.find_faces(image, style)
    if not faces:
        return None, style
    areas = np.array([f.area for f in faces])
    return faces[select_distinctive_face(np.stack([f.embedding for f in faces]), areas)], style


def character_mask(
    image: np.ndarray, face_box: np.ndarray, style: str, priors: Priors
) -> tuple[np.ndarray | None, str]:
    """The character's mask from its face box (the style's segmenter, with the person box
    where `masks.person_box_prompt` asks for it), or None and why it was refused."""
    detector = priors.person_detector() if priors.masks.person_box_prompt else None
    person_boxes = detector.detect(image) if detector is not None else None
    mask, record = segment_character(
        image, face_box, priors.segmenter_for(style), person_boxes, priors.masks
    )
    return (mask, "") if record["status"] == "ok" else (None, record["skip_reason"])


def target_conditions(
    target: np.ndarray, face_box: np.ndarray, style: str, priors: Priors
) -> tuple[tuple[np.ndarray, np.ndarray, str] | None, str, str]:
    """What a target conditions training on, from its image and the character's face box:
    the character's mask, its pose drawn as the control image, and its caption. Returns them,
    or None with the stage that stopped it and why."""
    mask, reason = character_mask(target, face_box, style, priors)
    if mask is None:
        return None, "masks", reason
    pose, reason = extract_pose(
        priors.pose_estimator(),
        target,
        mask,
        priors.poses.score_threshold,
        priors.poses.min_keypoints,
    )
    if pose is None:
        return None, "poses", reason
    prompt = priors.captioner().caption_batch([target])[0]
    problems = caption_problems(prompt, priors.captions.min_words, priors.captions.max_words)
    if problems:
        return None, "captions", "; ".join(problems)
    height, width = target.shape[:2]
    control = draw_openpose(pose, (width, height), priors.poses.score_threshold)
    return (mask, control, prompt), "", ""


def single_triplet(
    single_id: str, path: Path, style: str, priors: Priors, params: DatasetParams
) -> tuple[Triplet | None, str, str]:
    """The triplet of one single image of `style` (`DataLayout.single_style`): the image is
    the reference, its horizontal flip the target.

    Returns the triplet, or None with the stage that stopped it and why.
    """
    try:
        reference = load_rgb(path, params.images.max_pixels)
    except ImageReadError as e:
        return None, "read", str(e)
    face, style = main_face(reference, style, priors)
    if face is None:
        return None, "faces", no_face_reason(style, priors.faces.anime)
    target = np.ascontiguousarray(reference[:, ::-1])
    width = reference.shape[1]
    x1, y1, x2, y2 = face.bbox
    flipped_box = np.array([width - x2, y1, width - x1, y2], dtype=np.float32)
    conditions, stage, reason = target_conditions(target, flipped_box, style, priors)
    if conditions is None:
        return None, stage, reason
    mask, pose_image, prompt = conditions
    truth = read_alpha(path)  # a sprite's alpha: the character's true mask, flipped as the target
    alpha_iou = math.nan if truth is None else mask_iou(mask, truth[:, ::-1])
    crop = segment_reference(reference, mask[:, ::-1], params.references)
    return (
        Triplet(
            triplet_id=f"single-{single_id}",
            source="single",
            movie="",
            character_id=-1,
            reference_frame=0,
            target_frame=0,
            prompt=prompt,
            face_embedding=[float(v) for v in face.embedding],
            face_embedding_raw_norm=float(face.raw_norm),
            reference_bbox=[float(v) for v in face.bbox],
            target_bbox=[float(v) for v in flipped_box],
            images={
                "reference.png": reference,
                "reference_crop.png": crop,
                "target.png": target,
                "target_mask.png": mask_image(mask),
                "target_pose.png": pose_image,
            },
            style=style,
            face_dropped=priors.faces.anime.drops_face(style),
            mask_alpha_iou=alpha_iou,
        ),
        "",
        "",
    )
