"""The `synthetic` asset group (article section 4.1): described characters, drawn in consistent
batches by a text-to-image model, made into triplets by the movies' stages; the `triplets`
asset takes them in beside the movies' and the single images'.

`synthetic_descriptions` writes descriptions.json and makes one partition per character;
per partition, `synthetic_images` draws its batch (`training.consistory`), and
`synthetic_triplets` finds the faces, drops a batch that shows more than one person, and makes
the masks, poses, captions and reference crops (`assets.synthetic`). A batch whose
description, generation params and code are unchanged is not drawn again. Off by default
(`synthetic.count: 0`). These assets load the training package (the generator), so they live
in the code location's training half, and `cameo synthetic build` runs them.
"""

import dataclasses
import functools
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from assets.contact_sheet import image_strip, markdown_preview
from assets.identity import STAGE as IDENTITY
from assets.synthetic import (
    SOURCE,
    batch_triplets,
    image_name,
    read_batch_images,
    write_batch_triplets,
)
from core.io import atomic_path, read_json, remove_path, save_image, write_json
from core.versioning import source_version
from perception.descriptions import (
    DESCRIPTIONS_VERSION,
    CharacterDescription,
    describe_characters,
    load_describer,
)

synthetic_partitions = dg.DynamicPartitionsDefinition(name="synthetic_characters")
BATCH_FILE = "batch.json"
# What a drawn batch depends on besides its description and params: the generator's code.
GENERATOR_VERSION = source_version("training.consistory")


def described(descriptions: Path) -> dict[str, CharacterDescription]:
    """descriptions.json's characters by id."""
    return {
        c["character_id"]: CharacterDescription(**c) for c in read_json(descriptions)["characters"]
    }


@functools.lru_cache(maxsize=1)
def text_to_image(profile: str, models_dir: str | None, model: str) -> Any:
    """The generator, loaded once per process (a run draws many batches)."""
    from training.consistory import load_text_to_image

    return load_text_to_image(profile, models_dir, model)


def batch_fingerprint(character: CharacterDescription, params) -> dict[str, Any]:
    """What decides a batch's images: its character, the generation params, the profile and
    the generator's code (not the identity threshold, applied after)."""
    generation = params.synthetic.model_dump(exclude={"count", "min_identity_similarity"})
    return {
        "character": dataclasses.asdict(character),
        "generation": generation,
        "profile": params.profile,
        "code": GENERATOR_VERSION,
    }


@dg.asset(
    group_name=SOURCE,
    required_resource_keys={"data", "params", "perception"},
    code_version=source_version(__name__),
)
def synthetic_descriptions(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """`synthetic.count` unique characters (gender, age, hair, clothing, style) from
    `synthetic.seed`, one partition of `synthetic_images` each; folders of characters no longer
    described are removed."""
    layout = context.resources.data.layout
    values = context.resources.params.values
    params = values.synthetic
    describer = load_describer(
        values.profile, context.resources.perception.models, params.describer
    )
    characters = describe_characters(params.seed, params.count, tuple(params.styles), describer)
    layout.synthetic_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        {
            "version": DESCRIPTIONS_VERSION,
            "seed": params.seed,
            "characters": [dataclasses.asdict(c) for c in characters],
        },
        layout.synthetic_descriptions,
    )
    ids = [c.character_id for c in characters]
    for folder in layout.synthetic_dir.iterdir():
        if folder.is_dir() and folder.name not in ids:
            remove_path(folder)
    instance = context.instance
    registered = set(instance.get_dynamic_partitions(synthetic_partitions.name))
    instance.add_dynamic_partitions(
        synthetic_partitions.name, [i for i in ids if i not in registered]
    )
    for gone in sorted(registered - set(ids)):
        instance.delete_dynamic_partition(synthetic_partitions.name, gone)
    table = pd.DataFrame(
        [{"character_id": c.character_id, "description": c.text} for c in characters]
    )
    return dg.MaterializeResult(
        metadata={
            "characters": len(characters),
            "version": DESCRIPTIONS_VERSION,
            "describer": params.describer or "template",
        }
        | (
            {"descriptions": dg.MetadataValue.md(table.head(20).to_markdown(index=False))}
            if characters
            else {}
        )
    )


@dg.asset(
    group_name=SOURCE,
    partitions_def=synthetic_partitions,
    deps=[synthetic_descriptions],
    required_resource_keys={"data", "params", "perception"},
    code_version=source_version(__name__),
)
def synthetic_images(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """One character's batch of `synthetic.batch_size` images in distinct settings, drawn
    together so that they show one person (ConsiStory); kept while its fingerprint holds."""
    from training.consistory import draw_batch

    layout = context.resources.data.layout
    values = context.resources.params.values
    character = described(layout.synthetic_descriptions)[context.partition_key]
    batch_dir = layout.synthetic_batch(character.character_id)
    fingerprint = batch_fingerprint(character, values)
    batch = read_json(batch_dir / BATCH_FILE) if (batch_dir / BATCH_FILE).is_file() else {}
    if batch.get("fingerprint") == fingerprint:
        prompts = batch["prompts"]
        images = read_batch_images(batch_dir, len(prompts))
        reused = True
    else:
        pipe = text_to_image(
            values.profile, context.resources.perception.models, values.synthetic.model
        )
        drawn, prompts = draw_batch(pipe, character, values.synthetic)
        images = [np.asarray(image.convert("RGB")) for image in drawn]
        with atomic_path(batch_dir) as tmp:
            tmp.mkdir()
            for i, image in enumerate(images):
                save_image(image, tmp / image_name(i))
            write_json({"fingerprint": fingerprint, "prompts": prompts}, tmp / BATCH_FILE)
        reused = False
    strip = image_strip(images, [f"{i}" + " (reference)" * (i == 0) for i in range(len(images))])
    return dg.MaterializeResult(
        metadata={
            "description": character.text,
            "style": character.style,
            "images": len(images),
            "consistent": values.synthetic.consistent,
            "reused": reused,
            "prompts": dg.MetadataValue.md("\n".join(f"{i}. {p}" for i, p in enumerate(prompts))),
            "preview": dg.MetadataValue.md(markdown_preview(strip)),
        }
    )


ONE_PERSON = "one_person_in_the_batch"


def one_person_check(triplets: list, skipped: list[dict], threshold: float) -> dg.AssetCheckResult:
    """The in-batch identity check as the UI shows it: passed where the batch's faces are one
    person, a warning where it was dropped as two, and a warning (never a pass) where no pair
    was left to check."""
    dropped = [s for s in skipped if s["stage"] == IDENTITY]
    if dropped:
        similarity = float(dropped[0]["identity_similarity"])
        return dg.AssetCheckResult(
            check_name=ONE_PERSON,
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=dropped[0]["reason"],
            metadata={"lowest_similarity": similarity},
        )
    if triplets:
        lowest = min(t.identity_similarity for t in triplets)
        return dg.AssetCheckResult(
            check_name=ONE_PERSON,
            passed=True,
            description=f"every face at least {threshold} of the reference's (lowest {lowest:.3f})",
            metadata={"lowest_similarity": lowest},
        )
    return dg.AssetCheckResult(
        check_name=ONE_PERSON,
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        description="not checked: no pair left, "
        + "; ".join(f"{s['stage']}: {s['reason']}" for s in skipped),
    )


@dg.asset(
    group_name=SOURCE,
    partitions_def=synthetic_partitions,
    deps=[synthetic_images],
    required_resource_keys={"data", "params", "perception"},
    code_version=source_version(__name__),
    check_specs=[
        dg.AssetCheckSpec(
            ONE_PERSON,
            asset="synthetic_triplets",
            description="dlib's cosine of every face of the batch to the reference's is at "
            "least synthetic.min_identity_similarity",
        )
    ],
)
def synthetic_triplets(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """The batch's (reference, target) triplets: its first image the reference, each other a
    target; the whole batch is dropped, with the reason, when any face is below
    `synthetic.min_identity_similarity` of the reference's (dlib)."""
    layout = context.resources.data.layout
    values = context.resources.params.values
    character = described(layout.synthetic_descriptions)[context.partition_key]
    batch_dir = layout.synthetic_batch(character.character_id)
    prompts = read_json(batch_dir / BATCH_FILE)["prompts"]
    images = read_batch_images(batch_dir, len(prompts))
    triplets, skipped = batch_triplets(
        character.character_id,
        images,
        character.style,
        context.resources.perception.priors,
        values,
        values.synthetic.min_identity_similarity,
    )
    write_batch_triplets(triplets, skipped, batch_dir)
    for s in skipped:
        context.log.warning(f"{character.character_id} left out at {s['stage']}: {s['reason']}")
    similarities = {t.triplet_id: round(t.identity_similarity, 4) for t in triplets}
    threshold = values.synthetic.min_identity_similarity
    return dg.MaterializeResult(
        check_results=[one_person_check(triplets, skipped, threshold)],
        metadata={
            "triplets": len(triplets),
            "skipped": len(skipped),
            "identity_similarity": dg.MetadataValue.json(similarities),
        }
        | (
            {
                "skipped_reasons": dg.MetadataValue.md(
                    "\n".join(f"- {s['stage']}: {s['reason']}" for s in skipped)
                )
            }
            if skipped
            else {}
        ),
    )


SYNTHETIC_ASSETS = (synthetic_descriptions, synthetic_images, synthetic_triplets)
# The entry module of each asset's code version: this one, which imports what they run.
SYNTHETIC_CODE_MODULES = (__name__,)
synthetic_descriptions_job = dg.define_asset_job(
    "synthetic_descriptions_job",
    selection=dg.AssetSelection.assets(synthetic_descriptions),
    description="Describe `synthetic.count` characters, one partition each.",
)
synthetic_job = dg.define_asset_job(
    "synthetic_job",
    selection=dg.AssetSelection.assets(synthetic_images, synthetic_triplets),
    partitions_def=synthetic_partitions,
    description="Draw one synthetic character's batch and make its triplets.",
)
SYNTHETIC_JOBS = (synthetic_descriptions_job, synthetic_job)
