"""The triplet dataset: identity split, buckets, the bucket batch sampler, CFG dropout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_scene import Scene

from training.data import (
    BucketBatchSampler,
    TripletDataset,
    check_buckets,
    collate,
    conditioning_face,
    draw_condition_dropout,
    drop_condition,
    identity_keys,
    load_manifest,
    person_keys,
    place,
    resolve_buckets,
    split_by_identity,
)
from training.features import triplet_keys
from training.model import TINY
from training.pipeline import CharacterInpaintPipeline

TINY_BUCKETS = "64,64;48,80;80,48"


def test_split_is_by_identity_deterministic_and_stable(triplets_root):
    manifest = load_manifest(triplets_root / "triplets")
    # Two triplets of one character must land on the same side.
    doubled = manifest.copy()
    doubled["triplet_id"] = doubled["triplet_id"] + "-b"
    both = pd.concat([manifest, doubled], ignore_index=True)
    train, validation = split_by_identity(both, 0.3, seed=0)
    assert len(validation) > 0 and len(train) > 0
    assert not set(identity_keys(train)) & set(identity_keys(validation))
    again_train, _ = split_by_identity(both, 0.3, seed=0)
    assert list(again_train["triplet_id"]) == list(train["triplet_id"])
    # Adding characters never moves an existing one across the split.
    _, fewer_validation = split_by_identity(both[both["character_id"] != 0], 0.3, seed=0)
    assert set(identity_keys(fewer_validation)) <= set(identity_keys(validation))
    assert len(split_by_identity(manifest, 0.0, seed=0)[1]) == 0


def test_a_single_of_a_movie_character_lands_on_the_characters_side(triplets_root):
    """A single image whose face is a movie character's (the same person, by the profile's
    embedding) is one person with that character: never one in training and the other held
    out, whatever the seed; with the rule off, each is split on its own."""
    manifest = load_manifest(triplets_root / "triplets")
    single = manifest["source"] == "single"
    character = manifest.index[manifest["source"] == "movie"][0]
    face = manifest.at[character, "face_embedding"]
    manifest["face_embedding"] = [
        face if is_single else own
        for own, is_single in zip(manifest.face_embedding, single, strict=True)
    ]
    keys = person_keys(manifest, 0.6)
    assert keys[single].tolist() == [keys[character]]
    assert person_keys(manifest, None).tolist() == identity_keys(manifest).tolist()
    apart = 0
    for seed in range(20):
        train, validation = split_by_identity(manifest, 0.5, seed, 0.6)
        sides = [set(train.triplet_id), set(validation.triplet_id)]
        pair = {manifest.at[character, "triplet_id"], manifest.loc[single, "triplet_id"].iloc[0]}
        assert any(pair <= side for side in sides), seed
        train, validation = split_by_identity(manifest, 0.5, seed, None)
        apart += not any(
            pair <= side for side in (set(train.triplet_id), set(validation.triplet_id))
        )
    assert apart > 0  # without the rule, some seed puts them on two sides


def test_empty_and_missing_datasets_are_clear_errors(tmp_path, triplets_root):
    with pytest.raises(FileNotFoundError, match="dvc repro dataset"):
        load_manifest(tmp_path / "nothing")
    manifest = load_manifest(triplets_root / "triplets")
    manifest.iloc[:0].to_parquet(triplets_root / "triplets" / "manifest.parquet")
    with pytest.raises(ValueError, match="no triplets"):
        load_manifest(triplets_root / "triplets")


def test_buckets_pixart_and_strings():
    pixart = resolve_buckets("pixart_1024")
    assert len(pixart) == 33 and (1024, 1024) in pixart
    check_buckets(pixart, 32)  # SDXL: VAE 8 × U-Net 4
    with pytest.raises(ValueError, match="multiple of 32"):
        check_buckets(resolve_buckets("1000,1000"), 32)
    placement = place(360, 640, resolve_buckets(TINY_BUCKETS))
    assert placement.bucket == (48, 80)
    assert placement.resized[0] >= 48 and placement.resized[1] >= 80
    assert placement.time_ids == [360, 640, *placement.crop_top_left, 48, 80]


def test_samples_fit_their_bucket_and_carry_raw_face_scale(triplets_root, tiny):
    manifest = load_manifest(triplets_root / "triplets")
    dataset = TripletDataset(
        manifest, triplets_root / "triplets", resolve_buckets(TINY_BUCKETS), tiny["body_processor"]
    )
    for index in range(len(dataset)):
        sample = dataset[index]
        height, width = dataset.placements[index].bucket
        assert sample["target"].shape == (3, height, width)
        assert sample["mask"].shape == (1, height, width)
        assert set(sample["mask"].unique().tolist()) <= {0.0, 1.0}
        assert sample["pose"].shape == (3, height, width)
        assert sample["target"].min() >= -1 and sample["target"].max() <= 1
        raw_norm = manifest.at[index, "face_embedding_raw_norm"]
        assert torch.linalg.norm(sample["face_embedding"]).item() == pytest.approx(raw_norm, 1e-4)
    batch = collate([dataset[0], dataset[2]])
    assert batch["target"].shape[0] == 2 and len(batch["prompt"]) == 2


def test_a_dropped_face_is_the_unconditional_input_and_keys_its_features(triplets_root):
    """An anime triplet whose face conditions nothing (`face_dropped`) gives training and
    evaluation zeros, as CFG dropout does, and a features key of its own."""
    manifest = load_manifest(triplets_root / "triplets")
    row = manifest.iloc[0]
    kept = conditioning_face(row["face_embedding"], row["face_embedding_raw_norm"], False)
    assert np.linalg.norm(kept) == pytest.approx(row["face_embedding_raw_norm"], 1e-4)
    assert not conditioning_face(row["face_embedding"], row["face_embedding_raw_norm"], True).any()
    buckets = resolve_buckets(TINY_BUCKETS)
    dropped = manifest.assign(face_dropped=[True] + [False] * (len(manifest) - 1))
    before = triplet_keys(manifest, triplets_root / "triplets", buckets)
    after = triplet_keys(dropped, triplets_root / "triplets", buckets)
    assert before[0] != after[0] and before[1:] == after[1:]


def _bucket_ids(n: int = 53, buckets: int = 4) -> list[int]:
    return [int(b) for b in np.random.default_rng(0).integers(0, buckets, n)]


def test_bucket_sampler_rules():
    bucket_ids = _bucket_ids()
    world = 3
    samplers = [BucketBatchSampler(bucket_ids, 4, world, rank, seed=5) for rank in range(world)]
    for epoch in range(3):
        seen: list[int] = []
        per_rank = []
        for sampler in samplers:
            sampler.set_epoch(epoch)
            batches = list(sampler)
            per_rank.append(len(batches))
            assert len(batches) == len(sampler)
            for batch in batches:
                assert len({bucket_ids[i] for i in batch}) == 1  # one bucket per batch
                assert 1 <= len(batch) <= 4
                seen += batch
        assert len(seen) == len(set(seen))  # no sample twice per epoch, ranks disjoint
        assert len(set(per_rank)) == 1  # every rank takes the same number of steps
    # Deterministic from seed and epoch, different across epochs.
    again = BucketBatchSampler(bucket_ids, 4, world, 0, seed=5)
    again.set_epoch(1)
    samplers[0].set_epoch(1)
    assert list(again) == list(samplers[0])
    samplers[0].set_epoch(2)
    assert list(again) != list(samplers[0])
    # Resuming at a position continues with exactly the batches not yet trained on.
    resumed = BucketBatchSampler(bucket_ids, 4, world, 0, seed=5)
    resumed.set_epoch(1, start=2)
    assert list(resumed) == list(again)[2:]


def test_source_weights_set_each_sources_share_of_an_epoch():
    """`training.source_weights`: 2 draws each synthetic triplet twice, 0.5 half of the single
    ones (another half each epoch), every epoch as long; all ones: the unweighted epochs."""
    sources = ["movie"] * 12 + ["single"] * 8 + ["synthetic"] * 6
    bucket_ids = [i % 2 for i in range(len(sources))]
    weight = {"movie": 1.0, "single": 0.5, "synthetic": 2.0}
    sampler = BucketBatchSampler(bucket_ids, 2, seed=1, weights=[weight[s] for s in sources])
    halves = set()
    for epoch in range(4):
        drawn = [i for batch in sampler.epoch_batches(epoch) for i in batch]
        counts = pd.Series([sources[i] for i in drawn]).value_counts()
        assert counts.to_dict() == {"movie": 12, "single": 4, "synthetic": 12}
        assert len(sampler.epoch_batches(epoch)) == len(sampler) == 14
        halves.add(frozenset(i for i in drawn if sources[i] == "single"))
    assert len(halves) > 1  # a different half of the singles across epochs
    plain = BucketBatchSampler(bucket_ids, 2, seed=1)
    ones = BucketBatchSampler(bucket_ids, 2, seed=1, weights=[1.0] * len(sources))
    assert ones.epoch_batches(3) == plain.epoch_batches(3)


def test_a_synthetic_character_is_on_one_side_of_the_split():
    """A synthetic character's triplets (one batch: the manifest's `movie`) share one key."""
    manifest = pd.DataFrame(
        {
            "triplet_id": [f"synthetic-0-{c:05d}-t{t:02d}" for c in range(10) for t in (1, 2, 3)],
            "source": "synthetic",
            "movie": [f"synthetic-0-{c:05d}" for c in range(10) for _ in range(3)],
            "character_id": 0,
        }
    )
    train, validation = split_by_identity(manifest, 0.3, seed=0)
    assert len(train) and len(validation)
    assert not set(train["movie"]) & set(validation["movie"])
    assert identity_keys(manifest).nunique() == 10


def test_bucket_sampler_refuses_too_few_batches():
    with pytest.raises(ValueError, match="fewer than 4 batches"):
        BucketBatchSampler([0, 0, 1], batch_size=2, num_replicas=4, rank=0)
    with pytest.raises(ValueError, match="batch_size"):
        BucketBatchSampler([0, 1], batch_size=0)


def test_cfg_dropout_rates():
    generator = torch.Generator().manual_seed(0)
    rates = {"text": 0.05, "face": 0.1, "body": 0.3}
    draws = draw_condition_dropout(40_000, rates, generator)
    for name, rate in rates.items():
        observed = draws[name].float().mean().item()
        # 40k Bernoulli draws: 5 standard deviations is under 0.012 for these rates.
        assert abs(observed - rate) < 5 * (rate * (1 - rate) / 40_000) ** 0.5
    # Independent per condition.
    both = (draws["face"] & draws["body"]).float().mean().item()
    assert abs(both - 0.03) < 0.005
    with pytest.raises(ValueError, match="unknown"):
        draw_condition_dropout(2, {"pose": 0.1}, generator)


def test_joint_dropout_trains_the_unconditional_branch():
    """The article's 5 % per condition alone drops all three together in 0.0125 % of
    samples; `all` draws that case on its own, as IP-Adapter's training does."""
    n = 200_000
    generator = torch.Generator().manual_seed(1)
    rates = {"all": 0.05, "text": 0.05, "face": 0.05, "body": 0.05}
    draws = draw_condition_dropout(n, rates, generator)

    def close(observed: float, expected: float) -> bool:
        return abs(observed - expected) < 5 * (expected * (1 - expected) / n) ** 0.5

    everything = (draws["text"] & draws["face"] & draws["body"]).float().mean().item()
    assert close(everything, 0.05 + 0.95 * 0.05**3)
    for name in ("text", "face", "body"):
        assert close(draws[name].float().mean().item(), 0.05 + 0.95 * 0.05)
    alone = draw_condition_dropout(n, {**rates, "all": 0.0}, generator)
    assert close((alone["text"] & alone["face"] & alone["body"]).float().mean().item(), 0.05**3)


def test_dropped_conditions_are_the_pipelines_unconditional_input(tiny, monkeypatch):
    """What training feeds for a dropped text, face or body condition is exactly what the
    pipeline feeds its unconditional branch."""
    import training.pipeline as pipeline_module

    seen = []
    real = pipeline_module.predict_noise

    def recording(*args, **kwargs):
        seen.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "predict_noise", recording)
    scene = Scene()
    pipe = CharacterInpaintPipeline(**tiny)
    pipe.set_progress_bar_config(disable=True)
    pipe(
        image=scene.base,
        mask_image=scene.mask,
        prompt="a woman in a red coat",
        face_embedding=scene.face * 25,
        body_features=scene.body,
        pose_image=scene.pose,
        num_inference_steps=1,
    )
    (args,) = seen
    prompt_embeds, pooled, face, body = args[6], args[7], args[9], args[10]
    cond_prompt, cond_pooled = pipe.encode_long_prompt("a woman in a red coat")
    all_dropped = torch.ones(1, dtype=torch.bool)
    expected = {
        "text": (drop_condition(cond_prompt, all_dropped), prompt_embeds[:1]),
        "pooled": (drop_condition(cond_pooled, all_dropped), pooled[:1]),
        "face": (drop_condition(face[1:], all_dropped), face[:1]),
        "body": (drop_condition(body[1:], all_dropped), body[:1]),
    }
    for name, (dropped, unconditional) in expected.items():
        assert torch.equal(dropped, unconditional), name
    # and a kept row is untouched
    kept = drop_condition(face[1:], torch.zeros(1, dtype=torch.bool))
    assert torch.equal(kept, face[1:])
    assert TINY.face_resampler.embed_dims == face.shape[-1]
