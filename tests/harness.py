"""Shared checks for the bad-input and fault tests: run `nextpoi` in-process, spy on the work, hash the outputs.

A refused input must (1) exit with status 2, (2) print one paragraph starting with "error:" that names the
offending key/column/file and a fix, (3) print no traceback, (4) start no work (no POI embeddings, no
training, no tree fitting: spied, not timed) and (5) leave every file under the output root unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nextpoi_lib import cli, experiment, preparation


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*argv: str) -> CliResult:
    """`nextpoi ARGV` in this process; what it printed and its exit status (SystemExit included)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as stop:  # argparse
            code = stop.code if isinstance(stop.code, int) else 1
    return CliResult(code, out.getvalue(), err.getvalue())


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (relative path -> digest); {} when root does not exist."""
    root = Path(root)
    if not root.exists():
        return {}
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@dataclass
class WorkSpy:
    """Records every call of the expensive work a run does; nothing of it may start for a refused input."""
    calls: list[str] = field(default_factory=list)

    @property
    def started(self) -> bool:
        return bool(self.calls)


@pytest.fixture
def work_spy(monkeypatch) -> WorkSpy:
    spy = WorkSpy()

    def recorder(name, original):
        def record(*args, **kwargs):
            spy.calls.append(name)
            return original(*args, **kwargs)
        return record

    for module, name in ((preparation, "cached_dgi_embeddings"), (experiment, "cross_validate"),
                         (experiment, "cross_validate_fitted")):
        monkeypatch.setattr(module, name, recorder(name, getattr(module, name)))
    return spy


@pytest.fixture
def output_root(tmp_path) -> Path:
    """An output root that already holds a user's file: a refused run must leave it (and everything) as it was."""
    root = tmp_path / "outputs"
    (root / "earlier").mkdir(parents=True)
    (root / "earlier" / "keep.txt").write_text("a user's file")
    return root


def assert_refused(result: CliResult, *named: str, spy: WorkSpy | None = None) -> str:
    """The checks (1)-(4) of the module docstring; returns the message. `named`: texts the message must contain
    (the key / column / file, and the fix)."""
    assert result.code == 2, f"exit status {result.code}, expected 2; stderr: {result.stderr}"
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n\n" not in message, f"not one paragraph: {message!r}"
    for text in named:
        assert text in message, f"{text!r} not in the message: {message}"
    if spy is not None:
        assert not spy.started, f"work started before the error: {spy.calls}"
    return message
