"""`cameo weights download` and `status` offline, for real: a local HTTP server speaks the Hub's
file endpoints (the ones huggingface_hub calls under HF_ENDPOINT: HEAD and GET
`/<repo>/resolve/<revision>/<file>`, the model info and tree APIs) and serves the publishers'
archives, with range requests and a connection that can be cut half-way. Every repository and
archive of models.lock.yaml is served in its real layout, with tiny files."""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath

import pytest
from click.testing import CliRunner

from orchestration.cli.main import main
from serving.weights import LOCK_FILE, WeightsError, entry_status, read_lock, write_lock
from serving.weights_download import download

COMMIT = "1234567890abcdef1234567890abcdef12345678"
INTERNVL_SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


@dataclass
class FakePublishers:
    """What the server serves, and what it was asked."""

    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo -> path -> bytes
    commits: dict[str, str] = field(default_factory=dict)  # repo -> the commit main points to
    archives: dict[str, bytes] = field(default_factory=dict)  # /files/<name> -> bytes
    cut: set[str] = field(default_factory=set)  # paths whose next GET stops half-way
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, range
    url: str = ""


def _handler(served: FakePublishers) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _error(self, status: int, code: str = "", message: str = "") -> None:
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _json(self, data) -> None:
            body = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _answer(self, body: bool) -> None:
            path = self.path.split("?", 1)[0]
            served.requests.append((self.command, path, self.headers.get("Range", "")))
            if api := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+))?", path):
                repo, kind, revision = api.groups()
                if repo not in served.repos:
                    return self._error(404, "RepoNotFound", "Repository not found")
                commit = served.commits[repo]
                if revision not in (None, "main", commit):
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                files = served.repos[repo]
                if kind == "tree":
                    return self._json(
                        [{"type": "file", "path": p, "size": len(b), "oid": "0" * 40}
                         for p, b in sorted(files.items())]
                    )  # fmt: skip
                return self._json(
                    {"id": repo, "sha": commit, "siblings": [{"rfilename": p} for p in files]}
                )
            if resolve := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                repo, revision, name = resolve.groups()
                if repo not in served.repos:
                    return self._error(404, "RepoNotFound", "Repository not found")
                if revision not in ("main", served.commits[repo]):
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                if name not in served.repos[repo]:
                    return self._error(404, "EntryNotFound", f"{name} does not exist")
                return self._file(path, served.repos[repo][name], body, served.commits[repo])
            if path.startswith("/files/") and path[7:] in served.archives:
                return self._file(path, served.archives[path[7:]], body)
            return self._error(404)

        def _file(self, path: str, data: bytes, body: bool, commit: str = "") -> None:
            start = 0
            if ranged := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
                start = int(ranged.group(1))
            if start > len(data):
                return self._error(416)
            self.send_response(206 if start else 200)
            if commit:
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            if path in served.cut:  # half the bytes, then the connection drops
                served.cut.discard(path)
                self.wfile.write(data[start : start + (len(data) - start) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(data[start:])

    return Handler


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _content(path: str) -> bytes:
    """A small file's bytes, different per path; weights files are larger (a few hundred kB,
    so a cut lands mid-file)."""
    size = 300_000 if path.endswith((".safetensors", ".bin", ".onnx")) else 200
    return (path.encode() * (size // len(path) + 1))[:size]


def serve_lock(served: FakePublishers) -> None:
    """Every Hub repository and archive of the repo's lock, in its layout, with tiny files: the
    URL entries' archives nest their members in a folder, as the publishers' do."""
    for entry in read_lock().values():
        inside = [PurePosixPath(name).relative_to(entry.name).as_posix() for name in entry.files]
        if entry.source.hub:
            names = inside or ["config.json", "tokenizer.model", *INTERNVL_SHARDS]
            files = {name: _content(f"{entry.source.hub}/{name}") for name in names}
            files["README.md"] = b"# not in any pattern"
            served.repos[entry.source.hub] = files
            served.commits[entry.source.hub] = entry.source.revision or COMMIT
        else:
            stem = PurePosixPath(entry.source.url).name
            if inside == ["."]:  # one file: the ONNX the loader reads is end2end.onnx inside
                members = {f"{stem[:-4]}/end2end.onnx": _content(entry.name)}
                members[f"{stem[:-4]}/deploy.json"] = b"{}"
            else:
                members = {f"{entry.name}/{name}": _content(name) for name in inside}
            served.archives[stem] = _zip(members)


@pytest.fixture
def publishers() -> Iterator[FakePublishers]:
    served = FakePublishers()
    serve_lock(served)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield served
    server.shutdown()
    server.server_close()


@pytest.fixture
def lock(tmp_path: Path, publishers: FakePublishers) -> Path:
    """The repo's lock with the publishers' URLs pointing at the local server."""
    entries = []
    for entry in read_lock().values():
        if entry.source.url:
            name = PurePosixPath(entry.source.url).name
            entry = replace(
                entry, source=replace(entry.source, url=f"{publishers.url}/files/{name}")
            )
        entries.append(entry)
    path = tmp_path / "models.lock.yaml"
    write_lock(entries, path)
    return path


def weights(*args: str, endpoint: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["weights", *args], env={"HF_ENDPOINT": endpoint})
    return result.exit_code, result.output


def test_download_records_pins_on_first_use_then_checks_them(tmp_path, lock, publishers):
    models = tmp_path / "models"
    options = ["--models", str(models), "--lock-file", str(lock), "--no-progress"]
    accept = ["--accept-licence", "antelopev2", "--accept-licence", "InternVL2-26B"]
    accept += ["--accept-licence", "rtmw-dw-x-l_simcc-cocktail14_270e-384x288_20231122.onnx"]

    code, out = weights("download", *options, *accept, endpoint=publishers.url)
    assert code == 1 and "not pinned in the lock" in out and "--lock" in out
    assert not publishers.requests  # refused before any download

    code, out = weights("download", "--lock", *options, *accept, endpoint=publishers.url)
    assert code == 0, out
    assert "licence accepted: The training data containing the annotation" in out
    pinned = read_lock(lock)
    for entry in pinned.values():
        assert entry.pinned() and entry.trusted_on_first_use, entry.name
        for name, digest in entry.files.items():
            assert hashlib.sha256((models / name).read_bytes()).hexdigest() == digest
    assert pinned["sam"].source.revision == COMMIT  # unpinned: main's commit, recorded
    # A revision the publisher's page gave stays as it was.
    assert pinned["InstantID"].source.revision == read_lock()["InstantID"].source.revision
    # The loaders' layouts: insightface's flat folder (the zip nests it), RTMW as one file,
    # InternVL's files found by the lock's patterns (not its README).
    assert sorted(p.name for p in (models / "antelopev2").glob("*.onnx")) == [
        "1k3d68.onnx", "2d106det.onnx", "genderage.onnx", "glintr100.onnx", "scrfd_10g_bnkps.onnx"
    ]  # fmt: skip
    rtmw = "rtmw-dw-x-l_simcc-cocktail14_270e-384x288_20231122.onnx"
    assert (models / rtmw).read_bytes() == _content(rtmw)
    internvl = sorted(PurePosixPath(n).name for n in pinned["InternVL2-26B"].files)
    assert internvl == sorted(["config.json", "tokenizer.model", *INTERNVL_SHARDS])

    code, out = weights("status", "--models", str(models), "--lock-file", str(lock), endpoint="")
    assert code == 0, out
    assert all("sha256 checked" in line for line in out.splitlines()[1:]), out

    # Everything present and checked: a second run asks the publishers nothing.
    publishers.requests.clear()
    code, out = weights("download", *options, *accept, endpoint=publishers.url)
    assert code == 0 and "0 downloaded" in out and not publishers.requests, out


def test_a_cut_connection_resumes_where_it_stopped(tmp_path, lock, publishers):
    sam, onnx = "sam/model.safetensors", "rtmw-dw-x-l_simcc-cocktail14_270e-384x288_20231122.zip"
    # huggingface_hub resumes from its last whole 10 MiB chunk: a file of two and a bit.
    large = bytes(range(256)) * (21 * 2**20 // 256)
    publishers.repos["facebook/sam-vit-huge"]["model.safetensors"] = large
    publishers.cut = {
        f"/facebook/sam-vit-huge/resolve/{COMMIT}/model.safetensors",
        f"/files/{onnx}",
    }
    entries = read_lock(lock)
    chosen = [entries["sam"], entries["rtmw-dw-x-l_simcc-cocktail14_270e-384x288_20231122.onnx"]]
    download(
        chosen, tmp_path / "models", lock_path=lock, record_pins=True,
        accepted_licences=[chosen[1].name], endpoint=publishers.url, progress=False, log=print,
    )  # fmt: skip
    assert not publishers.cut  # both were cut once
    resumed = {p.rsplit("/", 1)[1]: r for m, p, r in publishers.requests if m == "GET" and r}
    half = len(publishers.archives[onnx]) // 2
    assert resumed == {"model.safetensors": f"bytes={10 * 2**20}-", onnx: f"bytes={half}-"}
    assert (tmp_path / "models" / sam).read_bytes() == large


def test_a_file_with_another_digest_is_refused_and_deleted(tmp_path, lock, publishers):
    entries = read_lock(lock)
    files = {name: "0" * 64 for name in entries["InstantID"].files}
    wrong = replace(entries["InstantID"], files=files)
    with pytest.raises(WeightsError, match=r"InstantID/.* has sha256 .*; deleted$"):
        download(
            [wrong], tmp_path / "models", lock_path=lock, endpoint=publishers.url, progress=False
        )
    assert not any((tmp_path / "models" / name).exists() for name in files)
    assert not entry_status(wrong, tmp_path / "models").complete

    archive = replace(
        entries["antelopev2"],
        source=replace(entries["antelopev2"].source, sha256="0" * 64),
        files={name: "0" * 64 for name in entries["antelopev2"].files},
    )
    with pytest.raises(WeightsError, match=r"antelopev2\.zip has sha256 .*download was deleted"):
        download(
            [archive], tmp_path / "models", lock_path=lock, accepted_licences=["antelopev2"],
            endpoint=publishers.url, progress=False,
        )  # fmt: skip
    assert not (tmp_path / "models" / "antelopev2").exists()
    assert not list((tmp_path / "models").rglob("*.part"))


def test_an_unknown_revision_is_one_line(tmp_path, lock, publishers):
    entry = read_lock(lock)["InternViT-300M-448px"]
    other = "f" * 40  # a pin the repository does not have
    pinned = replace(
        entry,
        source=replace(entry.source, revision=other),
        files=dict.fromkeys(entry.files, "0" * 64),
    )
    with pytest.raises(WeightsError) as refused:
        download(
            [pinned], tmp_path / "models", lock_path=lock, endpoint=publishers.url, progress=False
        )
    message = str(refused.value)
    assert message == (
        f"InternViT-300M-448px: OpenGVLab/InternViT-300M-448px has no revision {other} "
        "(the lock's pin)"
    )


def test_non_commercial_weights_need_their_licence_accepted(tmp_path, lock, publishers):
    code, out = weights(
        "download", "antelopev2", "sam", "--lock", "--models", str(tmp_path / "models"),
        "--lock-file", str(lock), endpoint=publishers.url,
    )  # fmt: skip
    assert code == 1 and "--accept-licence antelopev2" in out and "non-commercial research" in out
    assert not publishers.requests


def test_status_sees_a_changed_file_and_names_the_command_for_what_is_missing(
    tmp_path, lock, publishers
):
    models = tmp_path / "models"
    entries = read_lock(lock)
    download(
        [entries["sam"]],
        models,
        lock_path=lock,
        record_pins=True,
        endpoint=publishers.url,
        progress=False,
    )
    (models / "sam" / "config.json").write_text("{}")
    code, out = weights(
        "status", "--for", "dataset", "--models", str(models), "--lock-file", str(lock), endpoint=""
    )
    sam = next(line for line in out.splitlines() if line.startswith("sam "))
    assert "changed since its download" in sam
    code, out = weights(
        "status",
        "--verify",
        "--for",
        "dataset",
        "--models",
        str(models),
        "--lock-file",
        str(lock),
        endpoint="",
    )
    sam = next(line for line in out.splitlines() if line.startswith("sam "))
    assert "differs: sam/config.json" in sam
    assert (
        code == 1
        and "`cameo weights download --for dataset --lock --accept-licence antelopev2" in out
    )


def test_the_readme_licence_table_is_the_lock_s():
    from serving.weights import licence_table

    readme = (LOCK_FILE.parent / "docs" / "models.md").read_text()
    assert licence_table(read_lock().values()) in readme
