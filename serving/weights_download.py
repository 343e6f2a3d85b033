"""`cameo weights download`: the `full` profile's weights from their publishers, as
models.lock.yaml pins them (serving/weights.py describes the lock).

Hub entries go through `huggingface_hub.hf_hub_download` into `<models>/<entry>/` at the pinned
commit: a connection cut mid-file resumes with a range request within the run (huggingface_hub
2.x retries 5 times, and restarts the file in a new run), `HF_TOKEN` opens gated repositories,
and `HF_ENDPOINT` is passed on explicitly, so a mirror set after import counts too. URL
entries are downloaded with HTTP range requests into a `.part` file that a later run resumes
too, then the members the loader reads are unpacked. Every file's
sha256 is compared with the lock; a file that differs is deleted, never left looking
complete. Entries the lock does not pin yet are downloaded only with `record_pins` (`--lock`),
which writes the commit and digests found into the lock as trusted on first use. Weights whose
licence forbids commercial use are downloaded only when accepted by name.
"""

from __future__ import annotations

import datetime
import http.client
import os
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, replace
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from core.io import atomic_path, write_json
from core.versioning import sha256
from serving.weights import (
    RECORDS_DIR,
    DownloadRecord,
    LockEntry,
    WeightsError,
    entry_status,
    read_lock,
    record_path,
    write_lock,
)

RESUME_ATTEMPTS = 5  # connection cuts survived per file before giving up (progress resets it)
_CHUNK = 1 << 20


def refuse_unaccepted(entries: Iterable[LockEntry], accepted: Iterable[str]) -> None:
    """Refuse, before any download, entries whose licence forbids commercial use and that
    were not accepted by name."""
    refused = [e for e in entries if not e.licence.commercial and e.name not in set(accepted)]
    if refused:
        said = "; ".join(
            f"{e.name}: {e.licence.text or e.licence.id} ({e.licence.url})" for e in refused
        )
        flags = " ".join(f"--accept-licence {e.name}" for e in refused)
        raise WeightsError(f"not for commercial use: {said}. Download them with {flags}")


def download(
    entries: Iterable[LockEntry],
    models_dir: str | Path,
    *,
    lock_path: str | Path,
    record_pins: bool = False,
    accepted_licences: Iterable[str] = (),
    endpoint: str | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> list[str]:
    """Download every entry not already present and checked; returns the names downloaded.
    With `record_pins`, what an unpinned entry turned out to be is written into the lock."""
    entries = list(entries)
    models_dir = Path(models_dir)
    accepted = set(accepted_licences)
    refuse_unaccepted(entries, accepted)
    unpinned = [e.name for e in entries if not e.pinned()]
    if unpinned and not record_pins:
        raise WeightsError(
            f"not pinned in the lock (no revision or digests): {', '.join(unpinned)}. "
            "`cameo weights download --lock` downloads them and records what it got as "
            "trusted on first use"
        )
    endpoint = endpoint or os.environ.get("HF_ENDPOINT")
    downloaded = []
    for entry in entries:
        status = entry_status(entry, models_dir)
        if entry.pinned() and status.verified.startswith("sha256 checked"):
            log(f"{entry.name}: present ({status.verified})")
            continue
        if not entry.licence.commercial:
            log(f"{entry.name}: licence accepted: {entry.licence.text} ({entry.licence.url})")
        log(f"{entry.name}: downloading from {entry.source.describe()}")
        if entry.source.hub:
            found = download_from_hub(entry, models_dir, endpoint, progress)
        else:
            found = download_from_url(entry, models_dir, progress, log)
        if entry.pinned():
            log(f"{entry.name}: {len(found.files)} files, sha256 checked against the lock")
        else:
            pinned = replace(found, trusted_on_first_use=datetime.date.today().isoformat())
            lock = read_lock(lock_path)
            lock[entry.name] = pinned
            write_lock(lock.values(), lock_path)
            log(
                f"{entry.name}: {len(found.files)} files, their sha256 recorded in {lock_path} "
                "(trusted on first use)"
            )
        downloaded.append(entry.name)
    return downloaded


def _checked_files(entry: LockEntry, models_dir: Path) -> dict[str, str]:
    """Each file's sha256, compared with the lock's: every file that differs is deleted (with
    the Hub's note of it, so the next run downloads it again) and named."""
    digests, differ = {}, []
    for name, expected in entry.files.items():
        path = models_dir / name
        digests[name] = sha256(path)
        if expected and digests[name] != expected:
            path.unlink()
            _hub_metadata(models_dir, entry, name).unlink(missing_ok=True)
            differ.append(f"{name} has sha256 {digests[name]}, the lock records {expected}")
    if differ:
        raise WeightsError(f"{entry.name}: {'; '.join(differ)}; deleted")
    return digests


def _hub_metadata(models_dir: Path, entry: LockEntry, name: str) -> Path:
    """Where hf_hub_download keeps its note of a file downloaded into a local folder."""
    inside = PurePosixPath(name).relative_to(entry.name)
    return models_dir / entry.name / ".cache" / "huggingface" / "download" / f"{inside}.metadata"


def _write_record(
    entry: LockEntry,
    models_dir: Path,
    digests: dict[str, str],
    revision: str | None,
    archive_sha256: str | None,
    converted: str = "",
) -> LockEntry:
    """Record the download beside the models and return the entry as downloaded (its source
    and files pinned to what was found)."""
    sizes = {name: (models_dir / name).stat().st_size for name in digests}
    record = DownloadRecord(
        entry=entry.name,
        source=entry.source.describe(),
        revision=revision,
        archive_sha256=archive_sha256,
        files=digests,
        sizes=sizes,
        downloaded=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        converted=converted,
    )
    write_json(asdict(record), record_path(models_dir, entry.name))
    source = replace(entry.source, revision=revision, sha256=archive_sha256)
    if entry.source.hub:
        source = replace(source, sha256=None)
    return replace(entry, source=source, files=digests, size_bytes=sum(sizes.values()))


def download_from_hub(
    entry: LockEntry, models_dir: Path, endpoint: str | None, progress: bool = True
) -> LockEntry:
    """The entry's files from its Hub repository at the pinned commit (or, unpinned, at the
    commit `main` points to now, so that every file comes from the same one)."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    repo = entry.source.hub
    revision = entry.source.revision
    (disable_progress_bars if not progress else enable_progress_bars)()
    try:
        if not entry.files:  # only patterns so far: the files of the revision that match
            api = HfApi(endpoint=endpoint)
            revision = revision or api.model_info(repo, revision="main").sha
            found = [
                f for f in api.list_repo_files(repo, revision=revision)
                if any(fnmatch(f, pattern) for pattern in entry.source.patterns or ())
            ]  # fmt: skip
            if not found:
                raise WeightsError(f"{entry.name}: no file of {repo}@{revision} matches the lock")
            entry = replace(entry, files={f"{entry.name}/{f}": None for f in sorted(found)})
        inside = {
            name: PurePosixPath(name).relative_to(entry.name).as_posix() for name in entry.files
        }
        if revision is None:
            first = hf_hub_url(
                repo, next(iter(inside.values())), revision="main", endpoint=endpoint
            )
            revision = get_hf_file_metadata(first, endpoint=endpoint).commit_hash
        for name in entry.files:
            hf_hub_download(
                repo, inside[name], revision=revision, local_dir=models_dir / entry.name,
                endpoint=endpoint,
            )  # fmt: skip
    except GatedRepoError as error:
        raise WeightsError(
            f"{entry.name}: {repo} is gated: accept its terms on https://huggingface.co/{repo} "
            "and set HF_TOKEN to a token of that account"
        ) from error
    except RevisionNotFoundError as error:
        raise WeightsError(
            f"{entry.name}: {repo} has no revision {revision} (the lock's pin)"
        ) from error
    except EntryNotFoundError as error:
        raise WeightsError(
            f"{entry.name}: {repo}@{revision} lacks a file the lock lists ({error})".splitlines()[0]
        ) from error
    except RepositoryNotFoundError as error:
        raise WeightsError(f"{entry.name}: no repository {repo} (or it needs HF_TOKEN)") from error
    except (HfHubHTTPError, OSError) as error:
        raise WeightsError(
            f"{entry.name}: cannot download from {endpoint or 'huggingface.co'}: "
            f"{str(error).splitlines()[0]} (run again: downloads resume)"
        ) from error
    digests = _checked_files(entry, models_dir)
    return _write_record(entry, models_dir, digests, revision, None)


def fetch_resumable(
    url: str, part: Path, progress: bool = True, log: Callable[[str], None] = print
) -> None:
    """Download `url` into `part`, appending to what an earlier try left there (an HTTP range
    request); a connection cut mid-way resumes up to RESUME_ATTEMPTS times without progress."""
    part.parent.mkdir(parents=True, exist_ok=True)
    attempts = RESUME_ATTEMPTS
    while True:
        offset = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(
            url, headers={"Range": f"bytes={offset}-"} if offset else {}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                if offset and response.status != 206:  # the server ignored the range
                    offset = 0
                length = response.headers.get("Content-Length")
                total = offset + int(length) if length is not None else None
                with (
                    part.open("ab" if offset else "wb") as out,
                    tqdm(
                        total=total, initial=offset, unit="B", unit_scale=True,
                        desc=part.name[:-5], disable=not progress, leave=False,
                    ) as bar,
                ):  # fmt: skip
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        bar.update(len(chunk))
                        attempts = RESUME_ATTEMPTS
            if total is None or part.stat().st_size >= total:
                return
            cut = f"the connection closed at {part.stat().st_size} of {total} bytes"
        except urllib.error.HTTPError as error:
            if error.code == 416 and offset:  # asked past the end: the part is whole
                return
            raise WeightsError(f"{url}: HTTP {error.code} {error.reason}") from error
        except (http.client.IncompleteRead, ConnectionError, TimeoutError) as error:
            cut = f"{type(error).__name__} at {part.stat().st_size} bytes"
        except urllib.error.URLError as error:
            raise WeightsError(f"cannot reach {url}: {error.reason}") from error
        attempts -= 1
        if attempts < 0:
            raise WeightsError(f"{url}: {cut}; run again to resume")
        log(f"{part.name[:-5]}: {cut}; resuming")


def unpack_members(archive: Path, pattern: str, target: Path, single_file: bool) -> str:
    """The archive's members matching `pattern` into `target` (a folder of them by their file
    names, or the one file itself); what was done, for the record."""
    with zipfile.ZipFile(archive) as zipped:
        members = [m for m in zipped.infolist() if not m.is_dir() and fnmatch(m.filename, pattern)]
        names = [PurePosixPath(m.filename).name for m in members]
        if not members or (single_file and len(members) != 1):
            raise WeightsError(
                f"{archive.name} has {len(members)} members matching {pattern!r}, not "
                f"{'one' if single_file else 'any'}: {', '.join(names[:5])}"
            )
        if len(set(names)) < len(names):
            raise WeightsError(f"{archive.name}: two members matching {pattern!r} share a name")
        with atomic_path(target) as tmp:
            if not single_file:
                tmp.mkdir()
            for member, name in zip(members, names, strict=True):
                with (
                    zipped.open(member) as source,
                    (tmp if single_file else tmp / name).open("wb") as out,
                ):
                    while chunk := source.read(_CHUNK):
                        out.write(chunk)
    return f"unpacked {len(members)} members matching {pattern!r} from {archive.name}"


def download_from_url(
    entry: LockEntry, models_dir: Path, progress: bool = True, log: Callable[[str], None] = print
) -> LockEntry:
    """The entry's archive from the publisher's URL, checked, then unpacked for the loader."""
    url = entry.source.url
    archive = models_dir / RECORDS_DIR / "downloads" / PurePosixPath(url).name
    part = archive.with_name(archive.name + ".part")
    fetch_resumable(url, part, progress, log)
    digest = sha256(part)
    if entry.source.sha256 and digest != entry.source.sha256:
        part.unlink()
        raise WeightsError(
            f"{entry.name}: {url} has sha256 {digest}, the lock records {entry.source.sha256}; "
            "the download was deleted"
        )
    part.replace(archive)
    single_file = list(entry.files) == [entry.name]
    converted = unpack_members(
        archive, entry.source.unpack or "*", models_dir / entry.name, single_file
    )
    missing = [name for name in entry.files if not (models_dir / name).is_file()]
    if missing:
        raise WeightsError(f"{entry.name}: {url} did not give {', '.join(missing)}")
    digests = _checked_files(entry, models_dir)
    archive.unlink()
    return _write_record(entry, models_dir, digests, None, digest, converted)
