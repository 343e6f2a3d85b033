"""A digest of every module's forward output in one training step, so two machines can be
compared layer by layer: the first module whose output differs names the kernel that rounds
differently (`cameo train --record-forward-digests` / `--compare-forward-digests`).

The digest is the sha256 of each output tensor's bytes, with its dtype and shape, in the order
the modules ran; a module called twice (the resamplers, a shared block) has one entry a call.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.io import write_json


def output_digest(output: Any) -> str:
    """The sha256 of every tensor in a module's output (tensors, tuples, lists, dicts and
    diffusers' output dataclasses), in order."""
    digest = hashlib.sha256()
    for tensor in _tensors(output):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _tensors(output: Any) -> Iterator[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, dict):  # diffusers' BaseOutput is a dict too
        for value in output.values():
            yield from _tensors(value)
    elif isinstance(output, list | tuple):
        for value in output:
            yield from _tensors(value)


@dataclass
class ForwardDigests:
    """The modules that ran, in order, each with the digest of its output; the step's loss."""

    modules: list[tuple[str, str]] = field(default_factory=list)
    loss: float | None = None
    cpu: str = field(default_factory=lambda: cpu_model())

    def save(self, path: Path) -> None:
        write_json(
            {
                "cpu": self.cpu,
                "torch": torch.__version__,
                "loss": None if self.loss is None else self.loss.hex(),
                "modules": [list(entry) for entry in self.modules],
            },
            Path(path),
        )

    @classmethod
    def load(cls, path: Path) -> ForwardDigests:
        values = json.loads(Path(path).read_text())
        loss = values["loss"]
        return cls(
            modules=[tuple(entry) for entry in values["modules"]],
            loss=None if loss is None else float.fromhex(loss),
            cpu=values["cpu"],
        )

    def first_difference(self, reference: ForwardDigests) -> str | None:
        """A sentence naming the first module whose output differs from `reference`'s (or
        where the two ran different modules), None when every output and the loss agree."""
        for index, (mine, theirs) in enumerate(zip(self.modules, reference.modules, strict=False)):
            if mine[0] != theirs[0]:
                return f"call {index + 1}: ran {mine[0]} where the reference ran {theirs[0]}"
            if mine[1] != theirs[1]:
                return (
                    f"call {index + 1} of {len(self.modules)}: {mine[0]} differs from the "
                    f"reference recorded on {reference.cpu!r} (this CPU: {self.cpu!r})"
                )
        if len(self.modules) != len(reference.modules):
            return f"{len(self.modules)} module calls, the reference {len(reference.modules)}"
        if self.loss != reference.loss:
            return f"every module's output agrees, not the loss: {self.loss!r}, {reference.loss!r}"
        return None


@dataclass(frozen=True)
class ForwardDigestsRequest:
    """What to do with the first training step's digests: write them to `path`, or compare
    them with the ones recorded there (a difference stops the run, naming the module)."""

    path: Path
    compare: bool

    def settle(self, digests: ForwardDigests) -> None:
        if not self.compare:
            digests.save(self.path)
            print(f"forward digests of {len(digests.modules)} module calls: {self.path}")
            return
        difference = digests.first_difference(ForwardDigests.load(self.path))
        if difference is not None:
            raise ForwardDigestsDiffer(
                f"the first training step differs from {self.path}: {difference}"
            )
        print(f"forward pass identical to {self.path} ({len(digests.modules)} module calls)")


class ForwardDigestsDiffer(ValueError):
    """This machine's first training step is not the reference machine's."""


@contextmanager
def recording_forward_digests(root: torch.nn.Module) -> Iterator[ForwardDigests]:
    """Record the digest of every submodule's forward output of `root` while the block runs."""
    digests = ForwardDigests()

    def hook(name: str) -> Any:
        def record(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            digests.modules.append((name, output_digest(output)))

        return record

    handles = [
        module.register_forward_hook(hook(name or type(root).__name__))
        for name, module in root.named_modules()
    ]
    try:
        yield digests
    finally:
        for handle in handles:
            handle.remove()


def cpu_model() -> str:
    """The CPU's model name (`/proc/cpuinfo`), or what the platform says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
