"""Synthetic characters (`python -m bench.synthetic [--profile full] [--characters N]`): the
identity consistency inside drawn batches with ConsiStory on and off, and the cost per
triplet.

For each of N described characters (`synthetic.seed`), the batch is drawn twice from the same
prompts and latents, with the method on and off (`synthetic.consistent`), on the profile's
generator and this machine's device. Each batch goes through the in-batch identity check
(`assets.synthetic.batch_identity`: every image's face to the reference's, dlib) and the
stages that make its triplets (`batch_triplets`). Reported per setting: faces found, the
similarities' mean and minimum, the batches the check keeps, seconds per batch (drawing) and
per triplet (drawing and stages). The tiny profile's random generator draws no faces, so its
consistency columns are empty and its seconds are CPU wiring costs; the figures that matter
need `full` (SDXL under $CAMEO_MODELS) on a GPU, and say pending where they were not run.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import numpy as np

from assets.synthetic import batch_identity, batch_triplets
from bench.report import PARAMS, write_section
from orchestration.params import Params, load_params
from perception.descriptions import describe_characters, load_describer
from perception.models import models_dir
from training.consistory import draw_batch, load_text_to_image

SECTION = "Synthetic characters: consistency and cost"


@dataclass
class Setting:
    """One setting's figures over the characters drawn."""

    name: str
    images: int = 0
    faces: int = 0
    similarities: list[float] = field(default_factory=list)
    batches: int = 0
    kept: int = 0
    triplets: int = 0
    draw_s: float = 0.0
    stages_s: float = 0.0

    def row(self) -> str:
        sims = np.array(self.similarities)
        mean = f"{sims.mean():.3f}" if sims.size else "-"
        low = f"{sims.min():.3f}" if sims.size else "-"
        per_triplet = (
            f"{(self.draw_s + self.stages_s) / self.triplets:.2f}" if self.triplets else "-"
        )
        return (
            f"| {self.name} | {self.faces} of {self.images} | {mean} | {low} | "
            f"{self.kept} of {self.batches} | {self.triplets} | "
            f"{self.draw_s / max(self.batches, 1):.2f} | {per_triplet} |"
        )


def measure(params: Params, characters: int) -> list[Setting]:
    """Draw and check each character's batch with the method on and off."""
    synthetic = params.synthetic
    describer = load_describer(params.profile, models_dir(), synthetic.describer)
    described = describe_characters(synthetic.seed, characters, tuple(synthetic.styles), describer)
    pipe = load_text_to_image(params.profile, models_dir(), synthetic.model)
    priors = params.priors()
    settings = []
    for consistent in (True, False):
        setting = Setting("ConsiStory" if consistent else "independent (method off)")
        drawing = synthetic.model_copy(update={"consistent": consistent})
        for character in described:
            start = time.perf_counter()
            drawn, _ = draw_batch(pipe, character, drawing)
            setting.draw_s += time.perf_counter() - start
            images = [np.asarray(image.convert("RGB")) for image in drawn]
            start = time.perf_counter()
            triplets, _ = batch_triplets(
                character.character_id,
                images,
                character.style,
                priors,
                params,
                synthetic.min_identity_similarity,
            )
            setting.stages_s += time.perf_counter() - start
            # The check's own figures, again outside the timing: a batch's cost is counted once.
            faces, _, similarities = batch_identity(images, character.style, priors)
            setting.images += len(images)
            setting.faces += sum(face is not None for face in faces)
            setting.similarities += list(similarities.values())
            setting.batches += 1
            setting.kept += bool(triplets)
            setting.triplets += len(triplets)
        settings.append(setting)
    return settings


def report(params: Params, settings: list[Setting]) -> str:
    synthetic = params.synthetic
    on, off = settings
    ratio = on.draw_s / off.draw_s if off.draw_s else float("nan")
    pending = (
        "\n\nPending: the consistency and GPU cost of the `full` profile (SDXL 1.0 base under "
        "$CAMEO_MODELS on a GPU: `python -m bench.synthetic --profile full`); these tiny "
        "figures are the wiring's, the random generator draws no faces."
        if params.profile == "tiny"
        else ""
    )
    return (
        f"Profile `{params.profile}`: {on.batches} characters, batches of "
        f"{synthetic.batch_size} images of {synthetic.size} px in {synthetic.steps} steps "
        f"(guidance {synthetic.guidance_scale}); the same prompts and latents in both settings. "
        "Similarity: dlib's cosine of each image's face to the reference's (the in-batch check, "
        f"threshold {synthetic.min_identity_similarity}).\n\n"
        "| setting | faces found | similarity mean | similarity min | batches kept | "
        "triplets | s per batch (drawing) | s per triplet (drawing + stages) |\n"
        "|---|---|---|---|---|---|---|---|\n"
        f"{on.row()}\n{off.row()}\n\n"
        f"ConsiStory draws a batch in {ratio:.2f}x the time of independent images (measured "
        "here: its second pass with feature injection and the vanilla queries of the first "
        "steps)." + pending
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--characters", type=int, default=4, help="characters drawn")
    args = parser.parse_args()
    params = load_params(PARAMS, args.profile)
    write_section(SECTION, report(params, measure(params, args.characters)))


if __name__ == "__main__":
    main()
