"""The triplets of each movie and single image, kept between builds of the dataset.

Every build writes the dataset anew (triplets/ is replaced as a whole, and `dvc repro` removes
it before the command runs), yet most of it is what the last build made: a movie whose stage
outputs are unchanged, or a single image whose bytes are unchanged, gives the same triplets
under the same params and code. Each such unit's triplets are kept in
`triplets-cache/<unit>/` with the fingerprint they were made from, and a build that computes
the same fingerprint links them into the new dataset instead of making them again (a single
image runs the face detector, the segmenter, the pose estimator and the captioner).

A fingerprint covers everything a unit's triplets are a function of: the triplets asset's
code version (the first-party source it imports, the perception code the singles run
included), the dataset params (a single's: the sections it reads, so a new seed for the
movies' pairs keeps them), and the unit's inputs (`movie_fingerprint`, `single_fingerprint`).
Only what a unit's code returned is kept; a unit that raised is made again next time. Entries
of units a build did not use are removed, so the cache holds the current dataset's units
only. Files are hard links where the file system allows, so the cache costs no second copy:
the dataset's files are only ever replaced, never written in place.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assets.params import DatasetParams
from assets.singles import SINGLE_PARAMS
from assets.stage import MOVIE_STAGE_DEPS, output_version, recorded_warnings
from core.io import TMP_PREFIX, atomic_path, link_tree, read_json, remove_path, write_json
from core.layout import DataLayout
from core.versioning import sha256

RECORD = "kept.json"


def _as_read_back(value: Any) -> Any:
    """`value` as it reads back from the record's JSON (tuples as lists, numpy floats as
    floats), so kept and newly made units give the same manifest bytes."""
    return json.loads(json.dumps(value))


def _common(
    code_version: str, params: DatasetParams, sections: set[str] | None = None
) -> dict[str, Any]:
    """The code version, and the params `sections` (default: every one)."""
    return {
        "code_version": code_version,
        "params": params.model_dump(mode="json", include=sections),
    }


def movie_fingerprint(
    layout: DataLayout, movie: str, video: Path, code_version: str, params: DatasetParams
) -> dict[str, Any]:
    """What a movie's triplets are made from: the file's name (skip records name it), the
    output of each of its stages (the md5s of its table and folder) and the warnings their
    records keep (a movie without characters says why)."""
    return {
        **_common(code_version, params),
        "file": video.name,
        "stages": {s: output_version(layout, s, movie).value for s in MOVIE_STAGE_DEPS},
        "warnings": recorded_warnings(layout, movie, MOVIE_STAGE_DEPS),
    }


def single_fingerprint(
    path: Path, style: str, code_version: str, params: DatasetParams
) -> dict[str, Any]:
    """What a single image's triplet is made from: the params it reads (`SINGLE_PARAMS`), the
    image's name, folder style and bytes (their sha256)."""
    return {
        **_common(code_version, params, set(SINGLE_PARAMS)),
        "file": path.name,
        "style": style,
        "sha256": sha256(path),
    }


@dataclass
class TripletCache:
    """The kept triplets under `folder`, one entry per unit (`movie-<key>`, `single-<id>`),
    and the units this build took from it and made anew."""

    folder: Path
    taken: list[str] = field(default_factory=list)
    made: list[str] = field(default_factory=list)

    def take(
        self, unit: str, fingerprint: dict[str, Any], out_dir: Path
    ) -> tuple[list[dict], list[dict]] | None:
        """The manifest rows and skip records kept for `unit`, its triplets' folders linked
        into `out_dir`; None when nothing is kept for this fingerprint."""
        try:
            record = read_json(self.folder / unit / RECORD)
        except (OSError, ValueError):  # none, or not one this code wrote: make the unit
            return None
        if record.get("fingerprint") != _as_read_back(fingerprint):
            return None
        linked = []
        try:
            for row in record["rows"]:
                linked.append(out_dir / row["triplet_id"])
                link_tree(self.folder / unit / row["triplet_id"], linked[-1])
        except OSError:  # a kept file gone (removed by hand): make the unit again
            for folder in linked:
                remove_path(folder)
            return None
        return record["rows"], record["skipped"]

    def keep(
        self,
        unit: str,
        fingerprint: dict[str, Any],
        rows: list[dict],
        skipped: list[dict],
        out_dir: Path,
    ) -> None:
        """Keep `unit`'s rows, skip records and triplets' folders (written in `out_dir`)."""
        with atomic_path(self.folder / unit) as tmp:
            tmp.mkdir()
            for row in rows:
                link_tree(out_dir / row["triplet_id"], tmp / row["triplet_id"])
            record = {"fingerprint": fingerprint, "rows": rows, "skipped": skipped}
            write_json(record, tmp / RECORD)

    def kept_or_made(
        self,
        unit: str,
        fingerprint: dict[str, Any],
        out_dir: Path,
        make: Callable[[], tuple[list[dict], list[dict]]],
    ) -> tuple[list[dict], list[dict]]:
        """`unit`'s manifest rows and skip records: those kept for `fingerprint` (folders
        linked into `out_dir`), else what `make` writes into `out_dir` and returns, kept for
        the next build. What `make` raises is raised, and nothing is kept."""
        if (kept := self.take(unit, fingerprint, out_dir)) is not None:
            self.taken.append(unit)
            return kept
        rows, skipped = _as_read_back(make())
        self.keep(unit, fingerprint, rows, skipped, out_dir)
        self.made.append(unit)
        return rows, skipped

    def prune(self) -> None:
        """Remove the entries of every unit this build neither took nor made."""
        if not self.folder.is_dir():
            return
        used = {*self.taken, *self.made}
        for entry in self.folder.iterdir():
            if entry.name not in used and not entry.name.startswith(TMP_PREFIX):
                remove_path(entry)
