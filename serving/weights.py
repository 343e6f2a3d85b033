"""The `full` profile's weights: the lock of what they are and where they come from, what a
models folder holds, and a mirror for clusters without internet.

`models.lock.yaml` (next to params.yaml) has one entry per folder or file the `full` profile
loads under $CAMEO_MODELS. The names are the loaders' own (params.yaml's `faces.model`,
`masks.model`, `masks.person_detector`, `poses.model`, `captions.model` and training/model/'s
folders; `required_models` gives them, and every command refuses a lock that misses one).
Each entry says:

- `source`: a Hugging Face Hub repository (`hub`, pinned by `revision`, a commit) or a
  publisher's URL (`url`, pinned by the archive's `sha256`), and for archives which members
  the loader reads (`unpack`: a glob; the members land by their file names);
- `files`: every file the loader reads, relative to the models folder, with its sha256;
- `licence`: its id, the publisher's page, whether commercial use is allowed, and the
  sentence that says so where it is restricted;
- `needed_for`: which commands load it (`dataset`, `train`, `serve`);
- `trusted_on_first_use`: the date `cameo weights download --lock` recorded a revision and
  digests no page gave (null where they were known beforehand or are not recorded yet).

`cameo weights download` (serving/weights_download.py) writes a record of each download
under `<models>/.cameo-weights/`, which `status` reads. `pack` and `fetch` keep the mirror
path: one `<entry>.tar` per entry, whose sha256 the lock keeps as `mirror_sha256`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from core.versioning import sha256
from perception.priors import Priors
from training.model import BODY_ENCODER_DIR, INSTANTID_DIR, SDXL_INPAINT_DIR

LOCK_FILE = Path(__file__).resolve().parents[1] / "models.lock.yaml"
RECORDS_DIR = ".cameo-weights"  # under the models folder: one JSON record per download
COMMANDS = ("dataset", "synthetic", "train", "serve")
_CHUNK = 1 << 20
_HEADER = """\
# The `full` profile's weights under $CAMEO_MODELS: where each comes from (a Hub revision or a
# publisher's URL), every file the loaders read with its sha256, its licence and which
# commands need it. serving/weights.py explains the fields; `cameo weights download` fetches
# and checks them, `cameo weights download --lock` records what is null on first use, and
# `cameo weights status` shows a models folder against this file.
"""


class WeightsError(RuntimeError):
    """The lock file, a download or a models folder is not what it should be."""


@dataclass(frozen=True)
class Licence:
    id: str
    url: str
    commercial: bool
    text: str = ""  # the publisher's sentence, where the licence restricts use


@dataclass(frozen=True)
class Source:
    hub: str | None = None  # a Hub repository id
    revision: str | None = None  # its pinned commit
    url: str | None = None  # a publisher's download URL
    sha256: str | None = None  # the archive's at `url`
    unpack: str | None = None  # the archive members the loader reads (a glob)
    patterns: tuple[str, ...] | None = None  # Hub files to take where the lock lists none yet

    def describe(self) -> str:
        if self.hub:
            return f"hf.co/{self.hub}@{(self.revision or 'main')[:12]}"
        return str(self.url)


@dataclass(frozen=True)
class LockEntry:
    name: str
    used_by: str
    needed_for: tuple[str, ...]
    source: Source
    licence: Licence
    files: dict[str, str | None]
    size_bytes: int | None = None
    trusted_on_first_use: str | None = None
    mirror_sha256: str | None = None

    def pinned(self) -> bool:
        """Whether the source and every file are pinned: a download is then checked, not
        trusted."""
        source = self.source.revision if self.source.hub else self.source.sha256
        return bool(source) and bool(self.files) and all(self.files.values())

    def to_dict(self) -> dict[str, Any]:
        entry = asdict(self)
        del entry["name"]
        entry["needed_for"] = list(self.needed_for)
        entry["source"] = {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in entry["source"].items()
            if v is not None
        }
        if not self.licence.text:
            del entry["licence"]["text"]
        return entry

    @classmethod
    def from_dict(cls, name: str, entry: dict[str, Any]) -> LockEntry:
        return cls(
            name=name,
            used_by=entry["used_by"],
            needed_for=tuple(entry["needed_for"]),
            source=Source(**{**entry["source"], **_tuple(entry["source"], "patterns")}),
            licence=Licence(**entry["licence"]),
            files=dict(entry["files"]),
            size_bytes=entry.get("size_bytes"),
            trusted_on_first_use=entry.get("trusted_on_first_use"),
            mirror_sha256=entry.get("mirror_sha256"),
        )


def _tuple(mapping: dict[str, Any], key: str) -> dict[str, tuple]:
    return {key: tuple(mapping[key])} if mapping.get(key) is not None else {}


def required_models(priors: Priors, synthetic_model: str) -> dict[str, str]:
    """`{entry under $CAMEO_MODELS: what loads it}` for the `full` profile of `priors` and the
    synthetic characters' generator (`synthetic.model`)."""
    return {
        priors.faces.model: "faces.model: insightface detection and ArcFace",
        priors.masks.model: "masks.model: SAM",
        priors.masks.person_detector: "masks.person_detector: Grounding-DINO (Note 1)",
        priors.masks.anime.model: "masks.anime.model: SkyTNT's anime segmentation ISNet (Note 2)",
        priors.poses.model: "poses.model: RTMW wholebody ONNX",
        priors.captions.model: "captions.model: the captioning VLM",
        SDXL_INPAINT_DIR: "training: SDXL 1.0 inpainting (diffusers layout)",
        INSTANTID_DIR: "training: InstantID IdentityNet and ip-adapter.bin",
        BODY_ENCODER_DIR: "training: InternViT body encoder",
        synthetic_model: "synthetic.model: SDXL 1.0 text-to-image (synthetic characters)",
    }


def read_lock(path: str | Path = LOCK_FILE) -> dict[str, LockEntry]:
    """`{entry name: LockEntry}` from the lock file; a malformed entry is named."""
    entries = (yaml.safe_load(Path(path).read_text()) or {}).get("models") or {}
    parsed = {}
    for name, entry in entries.items():
        try:
            parsed[name] = LockEntry.from_dict(name, entry)
        except (KeyError, TypeError) as error:
            raise WeightsError(f"{path}: entry {name} is malformed ({error!r})") from error
    return parsed


def write_lock(entries: Iterable[LockEntry], path: str | Path = LOCK_FILE) -> None:
    """Rewrite the lock file (atomically: a kill leaves the old one)."""
    body = yaml.safe_dump({"models": {e.name: e.to_dict() for e in entries}}, sort_keys=False)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    tmp.write_text(_HEADER + body)
    tmp.replace(path)


def checked_lock(required: Mapping[str, str], path: str | Path = LOCK_FILE) -> dict[str, LockEntry]:
    """The lock file's entries; WeightsError when it misses a model the params name
    (`required`: `required_models`)."""
    entries = read_lock(path)
    missing = sorted(set(required) - set(entries))
    if missing:
        raise WeightsError(
            f"{path} does not list {', '.join(missing)}, which params.yaml's `full` profile "
            "loads: add them (their source, files and licence)"
        )
    return entries


def select(
    entries: dict[str, LockEntry], names: Sequence[str] = (), needed_for: str | None = None
) -> list[LockEntry]:
    """The entries named (all when none), then those `needed_for` a command; an unknown name
    is refused with the known ones."""
    unknown = sorted(set(names) - set(entries))
    if unknown:
        raise WeightsError(
            f"no entry {', '.join(unknown)} in the lock; known: {', '.join(entries)}"
        )
    if needed_for is not None and needed_for not in COMMANDS:
        raise WeightsError(f"--for {needed_for}: one of {', '.join(COMMANDS)}")
    chosen = [entries[n] for n in names] if names else list(entries.values())
    return [e for e in chosen if needed_for is None or needed_for in e.needed_for]


# What a download leaves: the record `status` reads.


@dataclass(frozen=True)
class DownloadRecord:
    entry: str
    source: str  # Source.describe() of what was downloaded
    revision: str | None  # the commit the Hub served
    archive_sha256: str | None
    files: dict[str, str]  # path -> sha256, as written
    sizes: dict[str, int]
    downloaded: str  # ISO date and time
    converted: str = ""  # what was done to the download for the loader, if anything


def record_path(models_dir: Path, name: str) -> Path:
    return Path(models_dir) / RECORDS_DIR / f"{name}.json"


def read_record(models_dir: Path, name: str) -> DownloadRecord | None:
    path = record_path(models_dir, name)
    try:
        return DownloadRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


@dataclass(frozen=True)
class EntryStatus:
    entry: LockEntry
    present: int  # files present
    expected: int  # of the files the lock (or the download, for patterns) lists
    size_bytes: int
    verified: str  # how the files are known to be the lock's, or what differs

    @property
    def complete(self) -> bool:
        return self.expected > 0 and self.present == self.expected


def entry_status(entry: LockEntry, models_dir: Path, verify: bool = False) -> EntryStatus:
    """How the models folder holds `entry`: files present, their size, and whether their
    digests are the lock's: from the download record (same sizes), or recomputed (`verify`)."""
    record = read_record(models_dir, entry.name)
    # An entry the lock gives by patterns only has the files its download found.
    files = entry.files or (record.files if record else {})
    paths = {name: Path(models_dir) / name for name in files}
    present = {name: path for name, path in paths.items() if path.is_file()}
    size = sum(path.stat().st_size for path in present.values())
    if not paths or len(present) < len(paths):
        verified = f"missing {len(paths) - len(present) if paths else 'all'} files"
    elif verify:
        differs = [n for n, p in present.items() if files[n] and sha256(p) != files[n]]
        unpinned = [n for n, digest in files.items() if not digest]
        verified = (
            f"differs: {', '.join(differs)}" if differs
            else "no digest in the lock" if unpinned
            else "sha256 checked now"
        )  # fmt: skip
    elif record is None:
        verified = "no download record (--verify computes the digests)"
    elif record.sizes != {n: p.stat().st_size for n, p in present.items()}:
        verified = "changed since its download (--verify)"
    elif any(files[n] and record.files.get(n) != files[n] for n in files):
        verified = "downloaded files differ from the lock"
    elif not entry.pinned():
        verified = "not pinned in the lock"
    else:
        verified = f"sha256 checked {record.downloaded[:10]}"
    return EntryStatus(entry, len(present), len(paths), size, verified)


def human_size(size: int | None) -> str:
    if size is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def status_table(rows: Sequence[EntryStatus]) -> str:
    """One aligned line per entry: present or missing, size (of the lock's), how verified,
    licence, the commands that need it."""
    header = ("entry", "present", "size", "verified", "licence", "needed for")
    lines = [header]
    for row in rows:
        entry = row.entry
        lines.append(
            (
                entry.name,
                "yes" if row.complete else f"{row.present}/{row.expected or '?'} files",
                f"{human_size(row.size_bytes)} of {human_size(entry.size_bytes)}",
                row.verified,
                entry.licence.id + ("" if entry.licence.commercial else " (non-commercial)"),
                ", ".join(entry.needed_for),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def licence_table(entries: Iterable[LockEntry]) -> str:
    """docs/models.md's licence table (Markdown), from the lock."""
    lines = [
        "| weights | source | licence | commercial use | needed for |",
        "|---|---|---|---|---|",
    ]
    for e in entries:
        source = f"[{e.source.hub}](https://huggingface.co/{e.source.hub})" if e.source.hub else (
            f"[{e.source.url.rsplit('/', 1)[-1]}]({e.source.url})"
        )  # fmt: skip
        commercial = "yes" if e.licence.commercial else "**no**"
        lines.append(
            f"| `{e.name}` | {source} | [{e.licence.id}]({e.licence.url}) | {commercial} | "
            f"{', '.join(e.needed_for)} |"
        )
    return "\n".join(lines)


# The mirror: one archive per entry, for clusters that cannot reach the publishers.


def _download(source, target: Path) -> str:
    """Copy a file object to `target`, returning the sha256 of what was written."""
    digest = hashlib.sha256()
    with target.open("wb") as out:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def pack(
    models_dir: str | Path,
    mirror_dir: str | Path,
    required: Mapping[str, str],
    lock_path: str | Path = LOCK_FILE,
) -> dict[str, str]:
    """Write `<entry>.tar` of every lock-file entry under `models_dir` into `mirror_dir` and
    record each archive's sha256 in the lock file. Returns `{entry: sha256}`."""
    models_dir, mirror_dir = Path(models_dir), Path(mirror_dir)
    entries = checked_lock(required, lock_path)
    absent = [name for name in entries if not (models_dir / name).exists()]
    if absent:
        raise WeightsError(f"not in {models_dir}: {', '.join(absent)}")
    mirror_dir.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name in entries:
        archive = mirror_dir / f"{name}.tar"
        tmp = mirror_dir / f".tmp-{name}.tar"
        with tarfile.open(tmp, "w") as tar:
            tar.add(models_dir / name, arcname=name)
        tmp.rename(archive)
        digests[name] = sha256(archive)
        entries[name] = replace(entries[name], mirror_sha256=digests[name])
    write_lock(entries.values(), lock_path)
    return digests


def fetch(
    mirror: str,
    models_dir: str | Path,
    required: Mapping[str, str],
    lock_path: str | Path = LOCK_FILE,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Download and unpack every lock-file entry missing from `models_dir` from `mirror`,
    checking each archive's recorded sha256 first. Returns the entries fetched."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    fetched = []
    for name, entry in checked_lock(required, lock_path).items():
        target = models_dir / name
        if target.exists():
            log(f"{name}: present, skipped")
            continue
        url = f"{mirror.rstrip('/')}/{name}.tar"
        archive = models_dir / f".tmp-{name}.tar"
        unpacked = models_dir / f".tmp-{name}"
        try:
            with urllib.request.urlopen(url) as response:
                digest = _download(response, archive)
            expected = entry.mirror_sha256
            if expected and digest != expected:
                raise WeightsError(f"{url} has sha256 {digest}, the lock file records {expected}")
            shutil.rmtree(unpacked, ignore_errors=True)
            with tarfile.open(archive) as tar:
                tar.extractall(unpacked, filter="data")  # no absolute paths, links out, devices
            if not (unpacked / name).exists():
                raise WeightsError(f"{url} does not hold {name} at its top")
            (unpacked / name).rename(target)
        except OSError as error:
            raise WeightsError(f"{name}: cannot fetch {url}: {error}") from error
        finally:
            archive.unlink(missing_ok=True)
            shutil.rmtree(unpacked, ignore_errors=True)
        verified = "sha256 checked" if entry.mirror_sha256 else "no sha256 recorded"
        log(f"{name}: fetched from {url} ({verified})")
        fetched.append(name)
    return fetched
