"""One command for a short window on a bare GPU machine (`make gpu-window`): a preflight, what
the machine lacks installed from a folder of wheels made beforehand, then the budgeted GPU
bench, every figure printed the moment it is measured and kept under the output folder.

Such a window (DESIGN.md) is one command of at most 10 minutes, with no network, the machine's
own Python and CUDA torch and no diffusers; only the files under `$OUT` and the last ~12,000
characters printed come back. So: nothing here needs a venv, weights or the network; the
machine's torch and CUDA are never replaced; a part that cannot fit, or fails, costs only its
own rows; and a run killed half-way leaves in `OUT` what it measured before.

    make gpu-window OUT=out BUDGET_S=540            # on the GPU machine
    make gpu-window OUT=out BUDGET_S=120 SMOKE=1    # a rehearsal on CPU (the tiny config)
    make gpu-wheels PY=3.12                         # beforehand, on a networked machine

Afterwards, `python -m bench.gpu_window --merge OUT/BENCHMARKS.md` copies the section into the
repository's BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEEL_LOCK = REPO / "requirements-gpu-window.txt"
# What the bench imports beyond torch, by module: checked before anything runs.
IMPORTS = ("diffusers", "transformers", "accelerate", "pydantic", "yaml", "pandas", "safetensors")
MARGIN_S = 20  # of the budget, kept back for the bench's imports and the launcher's report
PARTS = {
    "model": "bench.model_gpu",
    "dataset": "bench.dataset_gpu",
    "synthetic": "bench.synthetic_gpu",
}


class Preflight:
    """Findings, each printed on one line as found and kept in `OUT/preflight.txt`."""

    def __init__(self, out: Path) -> None:
        self.path = out / "preflight.txt"
        self.lines: list[str] = []

    def say(self, name: str, finding: str) -> None:
        line = f"preflight: {name}: {finding}"
        print(line, flush=True)
        self.lines.append(line)
        self.path.write_text("\n".join(self.lines) + "\n")


def missing_distributions(lock: Path = WHEEL_LOCK) -> list[str]:
    """The `name==version` lines of the wheel lock this interpreter lacks (any version of a
    distribution present counts: the machine's own is kept)."""
    missing = []
    for line in lock.read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if not requirement:
            continue
        try:
            importlib.metadata.version(requirement.split("==")[0])
        except importlib.metadata.PackageNotFoundError:
            missing.append(requirement)
    return missing


def install_missing(wheels: Path, preflight: Preflight) -> None:
    """Install, without dependencies or network, what the machine lacks from `wheels`."""
    missing = missing_distributions()
    if not missing:
        preflight.say("wheels", "nothing to install")
        return
    if not wheels.is_dir():
        preflight.say("wheels", f"missing {', '.join(missing)}, and no {wheels} to install from")
        return
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps"]
    done = subprocess.run(
        [*command, "--find-links", str(wheels), *missing], capture_output=True, text=True
    )
    said = "installed" if done.returncode == 0 else f"failed ({done.stderr.strip()[-200:]})"
    preflight.say("wheels", f"{said}: {', '.join(missing)}")


def compile_check(cuda: bool, timeout_s: float) -> str | None:
    """None when a one-op `torch.compile` runs here (in a child, so a hang costs only the
    timeout), else why not."""
    device = "cuda" if cuda else "cpu"
    code = (
        "import torch; f = torch.compile(lambda x: x.sin() + 1); "
        f"print(float(f(torch.ones(8, device='{device}')).sum()))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return f"a one-op compile did not finish in {timeout_s:.0f} s"
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["failed"])[-1][:160]
    return None


def preflight_checks(out: Path, wheels: Path, smoke: bool) -> tuple[Preflight, str | None]:
    """Every finding on its line; returns them and why compile cannot run (None: it can)."""
    preflight = Preflight(out)
    preflight.say("python", sys.version.split()[0])
    import torch

    cuda = torch.cuda.is_available()
    preflight.say("torch", f"{torch.__version__}, CUDA {torch.version.cuda or 'none'}")
    if cuda:
        props = torch.cuda.get_device_properties(0)
        preflight.say("gpu", f"{props.name}, {props.total_memory / 2**30:.1f} GiB")
    else:
        preflight.say("gpu", "none" + (" (a smoke run on CPU)" if smoke else ""))
    smi = shutil.which("nvidia-smi")
    if smi:
        query = [smi, "--query-gpu=driver_version", "--format=csv,noheader"]
        driver = subprocess.run(query, capture_output=True, text=True).stdout.strip()
        preflight.say("driver", driver or "unknown")
    compiler = shutil.which("cc") or shutil.which("gcc")
    preflight.say("c compiler", compiler or "none (Triton cannot build kernels)")
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    preflight.say("python headers", str(headers) if headers.exists() else "none")
    install_missing(wheels, preflight)
    for module in IMPORTS:
        found = importlib.util.find_spec(module) is not None
        preflight.say(f"import {module}", "ok" if found else "missing")
    if smoke:
        no_compile = None  # the smoke run compiles with dynamo's eager backend
        preflight.say("torch.compile", "not checked (the smoke run uses the eager backend)")
    elif not compiler or not headers.exists():
        no_compile = "no C compiler" if not compiler else "no Python headers"
        preflight.say("torch.compile", f"skipped: {no_compile}; the compile levers are skipped")
    else:
        no_compile = compile_check(cuda, 180)
        preflight.say("torch.compile", no_compile or "a one-op compile runs")
    return preflight, no_compile


def bench_arguments(
    out: Path, budget_s: float, smoke: bool, no_compile: str | None, fail_part: str | None
) -> list[str]:
    """What every bench of `PARTS` is run with."""
    arguments = ["--out", str(out), "--budget-s", f"{budget_s:.0f}"]
    arguments += ["--smoke"] if smoke else []
    arguments += ["--no-compile", no_compile] if no_compile else []
    return arguments + (["--fail-part", fail_part] if fail_part else [])


def run_bench(
    part: str,
    out: Path,
    budget_s: float,
    smoke: bool,
    no_compile: str | None,
    fail_part: str | None = None,
) -> int:
    """The bench as a child, its lines passed through as they come; killed (its group) when
    the budget runs out, which leaves under `out` what it measured."""
    command = [sys.executable, "-m", PARTS[part]]
    command += bench_arguments(out, budget_s, smoke, no_compile, fail_part)
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    # The bench keeps to its budget part by part; the margin covers its imports and the part
    # under way when the budget ends, and is the launcher's own reserve.
    deadline = time.monotonic() + budget_s + MARGIN_S
    assert process.stdout is not None
    try:
        for line in process.stdout:
            print(line, end="", flush=True)
            if time.monotonic() > deadline:
                break
        process.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        pass
    if process.poll() is None:
        print(f"gpu-window: the bench ran past its budget ({budget_s:.0f} s): stopped", flush=True)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return process.returncode


def merge(section_file: Path, report: Path) -> list[str]:
    """Copy every section of `section_file` into `report` (bench/report.py's format)."""
    import re

    from bench.report import write_section

    pattern = re.compile(
        r"<!-- section:(.*?) -->\n## .*?\n\n_(.*?)_\n\n(.*?)\n<!-- /section:\1 -->", re.S
    )
    names = []
    for name, _stamp, body in pattern.findall(section_file.read_text()):
        write_section(name, body, report)
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-window-out"))
    parser.add_argument("--budget-s", type=float, default=540)
    parser.add_argument("--part", choices=sorted(PARTS), default="model")
    parser.add_argument("--smoke", action="store_true", help="the tiny config on CPU")
    parser.add_argument("--wheels", type=Path, default=REPO / "gpu-wheels")
    parser.add_argument("--merge", type=Path, help="copy this file's sections into BENCHMARKS.md")
    parser.add_argument("--fail-part", default=None, help="rehearsal: make this part raise")
    args = parser.parse_args(argv)
    if args.merge:
        from bench.report import REPORT

        print(f"merged into {REPORT}: {', '.join(merge(args.merge, REPORT)) or 'nothing'}")
        return 0
    start = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    _, no_compile = preflight_checks(args.out, args.wheels, args.smoke)
    left = args.budget_s - (time.monotonic() - start) - MARGIN_S
    code = run_bench(args.part, args.out, max(left, 0), args.smoke, no_compile, args.fail_part)
    kept = ", ".join(sorted(p.name for p in args.out.iterdir())) or "nothing"
    print(f"gpu-window: done in {time.monotonic() - start:.0f} s (exit {code}); {args.out}: {kept}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
