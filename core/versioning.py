"""What identifies a version: DVC's md5 of a file or folder, the md5 a `dvc.lock` records for
an output, the git commit and working tree that code comes from, and the code version of an
asset (the digest of the first-party source its modules import). Training tags its runs with
these; lineage follows them back."""

from __future__ import annotations

import ast
import functools
import hashlib
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

LOCK_FILE = "dvc.lock"
FIRST_PARTY = ("core", "perception", "assets", "training", "serving", "orchestration")
# The folder holding the first-party packages, whose files code versions are read from.
SOURCE_ROOT = Path(__file__).resolve().parents[1]
# What the project (a wheel of cameo) is built from, beside the first-party packages.
PROJECT_FILES = ("pyproject.toml", "README.md")


def dvc_md5(path: Path) -> str:
    """The md5 DVC records for a file or folder (folders: '<md5>.dir'), computed as DVC does."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as tmp:
        _, _, obj = build(HashFileDB(fs, tmp), str(path), fs, "md5", dry_run=True)
    return obj.hash_info.value


def sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def lock_outs(lock: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every out of a parsed dvc.lock, in any stage."""
    return [
        out for stage in (lock or {}).get("stages", {}).values() for out in stage.get("outs", [])
    ]


def locked_md5(path: Path, lock_file: Path) -> str | None:
    """The md5 `lock_file` records for the out at `path`; None when it does not list it."""
    if not lock_file.is_file():
        return None
    for out in lock_outs(yaml.safe_load(lock_file.read_text())):
        if (lock_file.parent / out["path"]).resolve() == path.resolve():
            return out.get("md5")
    return None


def locked_out_path(lock: dict[str, Any] | None, md5: str) -> str | None:
    """The path of the out that a parsed dvc.lock records with `md5`, in any stage."""
    return next((out["path"] for out in lock_outs(lock) if out.get("md5") == md5), None)


def git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`git ARGS` in `root`, output captured, never raising on a non-zero exit."""
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def git_root(path: str | Path | None = None) -> Path | None:
    """The top of the git working tree holding `path` (default: the working directory);
    None outside one."""
    start = Path(path or Path.cwd())
    if not start.is_dir():
        return None
    try:
        result = git(start, "rev-parse", "--show-toplevel")
    except OSError:
        return None
    return Path(result.stdout.strip()) if result.returncode == 0 else None


def git_commit(root: Path) -> str:
    """HEAD of the working tree at `root`; "unknown" outside git."""
    try:
        result = git(root, "rev-parse", "HEAD")
    except OSError:
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def module_file(module: str, root: Path | None = None) -> Path | None:
    """The source file of first-party `module` under `root` (a package's: its __init__.py);
    None when there is none."""
    base = (root or SOURCE_ROOT).joinpath(*module.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def module_name(path: Path, root: Path | None = None) -> str:
    """The module name of a source file under `root` (a package's __init__.py: the package)."""
    parts = path.relative_to(root or SOURCE_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _with_packages(module: str) -> set[str]:
    """`module` and every package above it: importing a.b.c runs a and a.b too."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _statements(body: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """Every statement of `body`, nested ones included (functions, classes, if, try, with...):
    import statements appear only there, so expressions need not be walked."""
    for node in body:
        yield node
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            yield from _statements(getattr(node, field, ()))


def _imports(path: Path, root: Path) -> tuple[set[str], set[str]]:
    """What a source file's import statements name, at module level or inside functions: the
    modules they require (`import a.b`: a.b; `from a import b`: a; relative imports resolved
    against the file's package) and the names they take from them (`from a import b`: a.b,
    a submodule or a name defined in a)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    required, submodules = set(), set()
    for node in _statements(ast.parse(path.read_bytes(), str(path)).body):
        if isinstance(node, ast.Import):
            required |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level > len(parts):
                    raise ImportError(f"{path}: relative import beyond its top-level package")
                above = parts[: len(parts) - node.level + 1]
                base = ".".join([*above, *([node.module] if node.module else [])])
            else:
                base = node.module
            required.add(base)
            submodules |= {f"{base}.{alias.name}" for alias in node.names}
    return required, submodules


def imported_modules(path: Path, root: Path | None = None) -> set[str]:
    """The first-party modules a source file imports, at module level or inside functions,
    with the packages above each: `import a.b` names a.b; `from a import b` names a, and a.b
    where b is a submodule; relative imports are resolved against the file's package. Read
    with `ast`: nothing is imported."""
    root = root or SOURCE_ROOT
    required, submodules = _imports(path, root)
    first_party = {m for m in required | submodules if m.split(".")[0] in FIRST_PARTY}
    for module in first_party & required:
        if module_file(module, root) is None:
            raise ModuleNotFoundError(f"{path} imports {module}, which has no source under {root}")
    # `from a import b` names a submodule only where b is one (else b is a name defined in a).
    found = (first_party & required) | {m for m in first_party if module_file(m, root)}
    return set().union(*map(_with_packages, found))


@functools.cache
def _imports_of(path: Path, root: Path) -> frozenset[str]:
    return frozenset(imported_modules(path, root))


def module_closure(*modules: str, root: Path | None = None) -> list[Path]:
    """The source files of first-party `modules` and of every first-party module they import,
    directly or not, inside functions too, with the packages above each, sorted."""
    root = (root or SOURCE_ROOT).resolve()
    wrong = [m for m in modules if m.split(".")[0] not in FIRST_PARTY]
    if wrong:
        raise ValueError(f"not first-party modules: {', '.join(wrong)}")
    files: dict[str, Path] = {}
    pending = set().union(*map(_with_packages, modules))
    while pending:
        module = pending.pop()
        path = module_file(module, root)
        if path is None:
            raise ModuleNotFoundError(f"{module} has no source under {root}")
        files[module] = path
        pending |= _imports_of(path, root) - files.keys()
    return sorted(files.values())


def third_party_modules(*modules: str, root: Path | None = None) -> set[str]:
    """The top-level names of the modules other than the standard library's and first-party
    ones that `module_closure(*modules)` imports (inside functions too): what an environment
    running those modules must install."""
    root = (root or SOURCE_ROOT).resolve()
    files = module_closure(*modules, root=root)
    tops = {module.split(".")[0] for path in files for module in _imports(path, root)[0]}
    return tops - set(sys.stdlib_module_names) - set(FIRST_PARTY) - {"__future__"}


def _files_digest(files: Iterable[Path], root: Path) -> str:
    """One digest of `files`: their paths under `root` and their contents."""
    digest = hashlib.sha256()
    for path in files:
        file_digest = hashlib.sha256(path.read_bytes()).hexdigest()
        digest.update(f"{path.relative_to(root).as_posix()} {file_digest}\n".encode())
    return digest.hexdigest()[:16]


@functools.cache
def _source_version(modules: tuple[str, ...], root: Path) -> str:
    return _files_digest(module_closure(*modules, root=root), root)


def source_version(*modules: str, root: Path | None = None) -> str:
    """A code version: the digest of the files of `module_closure(*modules)` (their paths
    under `root` and their contents), the entry modules of what an asset runs. Read as files,
    never imported: versioning `training.model` must not load torch. Computed once per process
    and root, like the code the process runs."""
    return _source_version(tuple(sorted(set(modules))), (root or SOURCE_ROOT).resolve())


def project_digest(root: Path | None = None) -> str:
    """A digest of every file the project is built from (`PROJECT_FILES` and the first-party
    packages): the source version of a wheel of cameo, and of an installation."""
    root = (root or SOURCE_ROOT).resolve()
    files = [root / name for name in PROJECT_FILES]
    for package in FIRST_PARTY:
        found = (root / package).rglob("*")
        files += sorted(p for p in found if p.is_file() and "__pycache__" not in p.parts)
    return _files_digest(files, root)
