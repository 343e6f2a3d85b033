"""Shared fixtures: tool state in temp dirs, telemetry off, one torch thread, the sample movie."""

import atexit
import fcntl
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import pytest

# Byte-code caches on for this run and every process it starts, whatever the caller's shell
# says (make test unsets it too): with PYTHONDONTWRITEBYTECODE every process compiles torch,
# diffusers, Dagster and MLflow again, and a hand-run suite took 16 min instead of 11.5.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

_STATE = Path(tempfile.mkdtemp(prefix="cameo-test-state-"))
atexit.register(shutil.rmtree, _STATE, ignore_errors=True)
os.environ.update(
    DAGSTER_DISABLE_TELEMETRY="1",
    MLFLOW_DISABLE_TELEMETRY="true",
    DVC_NO_ANALYTICS="1",
    GX_ANALYTICS_ENABLED="false",
    DO_NOT_TRACK="1",
    GRADIO_ANALYTICS_ENABLED="False",
    MPLCONFIGDIR=str(_STATE / "matplotlib"),
    DAGSTER_HOME=str(_STATE / "dagster"),
    CAMEO_PROFILE="tiny",
    # The tests' MLflow servers start no job runners, as in production (k8s/mlflow).
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
)

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"

# The browser tests' headless Chromium: Debian's `chromium`, driven by Playwright's Python
# package. Closed network: no background requests, no first-run or update checks (they stall
# the page).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# A folder: the browser tests save the docs' pictures there (docs/images; unset: none saved).
SCREENSHOTS = os.environ.get("CAMEO_SCREENSHOTS")
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)",
)

_EMPTY_TRACKING_STORE = _STATE / "empty-tracking-store" / "mlruns.db"
_EMPTY_TRACKING_STORE_LOCK = threading.Lock()


def tracking_store(folder: Path) -> str:
    """The URI of a SQLite MLflow store in `folder` (its `mlruns.db`), for a test to use. A new
    one starts as a copy of an empty store MLflow created once in this process: creating a
    store runs MLflow's schema migrations, seconds each, and the tests make dozens."""
    with _EMPTY_TRACKING_STORE_LOCK:
        if not _EMPTY_TRACKING_STORE.exists():
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            _EMPTY_TRACKING_STORE.parent.mkdir(parents=True)
            partial = _EMPTY_TRACKING_STORE.with_suffix(".partial")
            artifacts = _EMPTY_TRACKING_STORE.parent / "artifacts"
            SqlAlchemyStore(f"sqlite:///{partial}", str(artifacts)).engine.dispose()
            partial.rename(_EMPTY_TRACKING_STORE)
    store = Path(folder) / "mlruns.db"
    if not store.exists():
        store.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_EMPTY_TRACKING_STORE, store)
    return f"sqlite:///{store}"


# `make test` runs the suite on two workers (pytest-xdist, `--dist loadgroup`), then the
# `serial` tests alone: they time the scoring server against short request timeouts, which a
# busy second core makes miss.
SERIAL = (
    "serving/test_serving_limits.py",
    "serving/test_serving_load.py",
)
# The serving tests share one tracking store, checkpoint and server (tests/serving/conftest.py)
# and number registered versions in the order of their files: one worker runs them all.
SHARED_SESSION = ("serving/",)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """`-m serial` (make test's second run) collects only the serial files: importing every
    test module to select six tests cost it about 20 s."""
    if config.getoption("markexpr") != "serial" or not collection_path.name.startswith("test_"):
        return None
    return not collection_path.relative_to(REPO / "tests").as_posix().startswith(SERIAL)


def xdist_group(path: str) -> str:
    """The unit a worker runs whole: a file (its module fixtures are built once), or a folder
    whose files share session fixtures."""
    return next((folder for folder in SHARED_SESSION if path.startswith(folder)), path)


# First: xdist's own hook reads the `xdist_group` markers into the node ids it schedules by.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the serial tests; give the others their worker group, the groups holding a slow
    test first (a long group started last would keep one worker busy alone at the end)."""
    groups = {}
    for item in items:
        path = Path(item.path).relative_to(REPO / "tests").as_posix()
        if path.startswith(SERIAL):
            item.add_marker(pytest.mark.serial)
        groups[item] = xdist_group(path)
        item.add_marker(pytest.mark.xdist_group(groups[item]))
    slow_groups = {groups[item] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: groups[item] not in slow_groups)  # stable: file order kept


def pytest_collection_finish(session: pytest.Session) -> None:
    """Refuse to run ungrouped: a pytest/xdist pair that drops the group from the node ids
    (pytest-dev/pytest-xdist#1386) spreads a file over both workers, each building its module
    fixtures again."""
    if session.config.getoption("loadgroup", False) and not all(
        "@" in i.nodeid for i in session.items
    ):
        raise pytest.UsageError(
            "--dist loadgroup did not group the tests: this pytest-xdist does not support this "
            "pytest (pyproject.toml pins the pair)"
        )


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory, worker_id: str) -> Path:
    """A data root holding the sample movie, its ground truth and the sample single images.
    Writing them takes half a minute (x264 without its CPU-specific code): the first worker
    of the run writes them once, and each worker copies them into a root of its own (tests
    build into it)."""
    from assets.sample_movie import write_sample_movie, write_sample_singles
    from core.layout import DataLayout

    # Under xdist each worker's base temp dir lies in the run's; alone, the base is the run's.
    run_tmp = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        run_tmp = run_tmp.parent
    written = run_tmp / "sample-inputs"
    with open(run_tmp / "sample-inputs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (written / ".complete").exists():
            write_sample_movie(DataLayout(written))
            write_sample_singles(DataLayout(written))
            (written / ".complete").touch()
    root = tmp_path_factory.mktemp("data")
    shutil.copytree(written, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".complete"))
    return root


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for the module's tests."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
