"""Pinned npm packages as data: fetched with the registry's own client, verified, cached.

``npm pack name@version`` downloads a package's tarball without installing anything; npm checks
it against the registry's integrity hash. We check it again against the hash pinned in our code
(so a cached tarball, one a user copied in by hand, or a mirror's copy is the exact file we
tested with) and move it into the cache only when it matches: a half-downloaded or altered
tarball never lands in the cache.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hivlp_milvus.errors import DataError

__all__ = ["NpmPackage", "default_cache_dir", "fetch_tarballs", "integrity_of"]

_INSTALL_HINT = (
    "install Node.js with npm (e.g. `apt-get install npm`, or https://nodejs.org), "
    "or download the tarballs on a machine that has it (`npm pack NAME@VERSION`) and put them in {where} "
    "(--tarballs DIR)"
)


@dataclass(frozen=True)
class NpmPackage:
    """One pinned package version.

    Attributes:
        name: the package name (unscoped), e.g. ``"emojilib"``.
        version: the exact version, e.g. ``"4.0.3"``.
        integrity: the registry's ``dist.integrity`` (``"sha512-<base64>"``) of that version's tarball.
    """

    name: str
    version: str
    integrity: str

    @property
    def spec(self) -> str:
        """``name@version``, as ``npm pack`` takes it."""
        return f"{self.name}@{self.version}"

    @property
    def filename(self) -> str:
        """The tarball's file name as ``npm pack`` writes it."""
        return f"{self.name}-{self.version}.tgz"


def default_cache_dir() -> Path:
    """``$HIVLP_CACHE_DIR/npm``, else ``$XDG_CACHE_HOME/hivlp-milvus/npm``, else ``~/.cache/hivlp-milvus/npm``."""
    if os.environ.get("HIVLP_CACHE_DIR"):
        return Path(os.environ["HIVLP_CACHE_DIR"]).expanduser() / "npm"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "hivlp-milvus" / "npm"


def integrity_of(path: str | Path) -> str:
    """The npm-style ``sha512-<base64>`` integrity string of a file."""
    digest = hashlib.sha512()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def _verify(path: Path, package: NpmPackage) -> None:
    actual = integrity_of(path)
    if actual != package.integrity:
        raise DataError(
            f"{path} is not the pinned {package.spec} tarball (integrity {actual[:24]}..., expected "
            f"{package.integrity[:24]}...); delete it and fetch again"
        )


def fetch_tarballs(
    packages: Sequence[NpmPackage],
    cache_dir: str | Path | None = None,
    *,
    npm: str | None = None,
    timeout: float = 900.0,
) -> dict[str, Path]:
    """Make every package's tarball available in ``cache_dir``, fetching only the missing ones.

    Args:
        packages: the pinned packages.
        cache_dir: where tarballs are kept (and where a user may put them by hand for offline
            use); default :func:`default_cache_dir`.
        npm: the npm executable (default: ``npm`` on ``PATH``). npm's own settings apply
            (``npm_config_registry`` for a mirror, proxies, ``.npmrc``).
        timeout: seconds allowed for the one ``npm pack`` call.

    Returns:
        ``{package name: path of its verified tarball}``.

    Raises:
        DataError: a cached tarball does not match its pinned integrity, npm is missing, or
            ``npm pack`` failed (registry unreachable, unknown version); the message says what to
            install or where to put the tarballs. Nothing half-downloaded is left in the cache.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    missing = []
    for package in packages:
        cached = cache / package.filename
        if cached.is_file():
            _verify(cached, package)
        else:
            missing.append(package)
    if missing:
        _npm_pack(missing, cache, npm=npm, timeout=timeout)
    return {package.name: cache / package.filename for package in packages}


def _npm_pack(packages: Sequence[NpmPackage], cache: Path, *, npm: str | None, timeout: float) -> None:
    names = ", ".join(p.filename for p in packages)
    hint = _INSTALL_HINT.format(where=cache)
    executable = npm or shutil.which("npm")
    if executable is None:
        raise DataError(f"the tarballs {names} are not in {cache} and npm is not on PATH: {hint}")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the tarball cache {cache}: {exc}; pass another --tarballs DIR") from exc
    # npm writes into a private temporary directory; only verified files are moved into the cache.
    with tempfile.TemporaryDirectory(dir=cache, prefix=".npm-pack-") as tmp:
        command = [executable, "pack", *(p.spec for p in packages), "--json", "--pack-destination", tmp]
        try:
            done = subprocess.run(command, cwd=tmp, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise DataError(f"`npm pack` of {names} took longer than {timeout:.0f} s; {hint}") from exc
        except OSError as exc:
            raise DataError(f"cannot run {executable}: {exc}; {hint}") from exc
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
            raise DataError(
                f"`npm pack` of {names} failed (exit {done.returncode}); is the npm registry reachable "
                f"(`npm config get registry`)? Otherwise {hint}. npm said:\n{tail}"
            )
        for package in packages:
            fetched = Path(tmp) / package.filename
            if not fetched.is_file():
                raise DataError(f"`npm pack {package.spec}` wrote no {package.filename}; {hint}")
            _verify(fetched, package)
            os.replace(fetched, cache / package.filename)
