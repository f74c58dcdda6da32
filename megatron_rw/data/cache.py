"""Atomic file writes and subprocess calls with errors that name the command.

Every step of ``prepare`` is skipped when its output exists, so an output must never exist half
written: each is written to a temporary path next to it and renamed into place (a rename within one
file system is atomic).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, Sequence


class CommandError(RuntimeError):
    """An external command failed; the message names the command and the end of its output."""


def run_command(cmd: Sequence[str], cwd: str | os.PathLike | None = None, timeout: float = 600) -> str:
    """Run ``cmd`` and return its stdout; raise ``CommandError`` naming the command on failure."""
    shown = shlex.join(str(c) for c in cmd)
    try:
        proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)
    except FileNotFoundError as exc:
        raise CommandError(f"`{shown}`: program not found ({exc.filename})") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"`{shown}`: timed out after {timeout:.0f} s") from exc
    if proc.returncode != 0:
        raise CommandError(f"`{shown}` exited with status {proc.returncode}: "
                           + _reason(proc.stderr or proc.stdout))
    return proc.stdout


def _reason(output: str) -> str:
    """The first lines that report an error (pip "ERROR:", apt "E:", npm "npm error"), else the
    last lines: pip and npm print warnings and log-file hints around the actual reason."""
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^(ERROR|E:|npm (error|ERR!))", ln.strip())]
    return " | ".join(errors[:3] if errors else lines[-3:])


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write (a file or a directory); rename it to ``path`` on success.

    On an exception the temporary is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    remove_path(tmp)
    try:
        yield tmp
        if path.is_dir():
            shutil.rmtree(path)  # a directory cannot be replaced by rename
        os.replace(tmp, path)
    finally:
        remove_path(tmp)


def remove_path(path: str | os.PathLike) -> None:
    """Remove a file or a directory tree if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike):
    """Read a JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)
