"""Reading the Debian packages the bundled data is built from: download one, check it, list its files.

Standard library only (a .deb is an `ar` archive holding `data.tar.xz`), so the prepare scripts run
without the project installed and without dpkg.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path


def download(package: str, version: str, folder: Path) -> Path:
    """`apt-get download PACKAGE=VERSION` into `folder` (needs apt and its package lists); the .deb's path."""
    if shutil.which("apt-get") is None:
        raise SystemExit(f"apt-get is not on this machine: download {package}_{version}_all.deb from a Debian mirror and pass it as --source")
    result = subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=folder, capture_output=True, text=True)
    found = sorted(folder.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not found:
        raise SystemExit(f"apt-get download {package}={version} failed (run `apt-get update` first?): {result.stderr.strip()}")
    return found[0]


def checked(deb: Path, sha256: str) -> bytes:
    """The .deb's bytes, refused unless its sha256 is the one the data card names."""
    raw = deb.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha256:
        raise SystemExit(f"{deb}: sha256 {digest} is not the one the data card names ({sha256}); download the version it names")
    return raw


def data_files(raw: bytes) -> dict[str, bytes]:
    """Path -> content of every regular file in the package's data.tar.* (paths as dpkg installs them, './' stripped)."""
    if raw[:8] != b"!<arch>\n":
        raise SystemExit("not a Debian package (no ar header)")
    offset, members = 8, {}
    while offset + 60 <= len(raw):
        header = raw[offset : offset + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
        members[name] = raw[offset + 60 : offset + 60 + size]
        offset += 60 + size + (size % 2)  # members are 2-byte aligned
    data = next((members[n] for n in members if n.startswith("data.tar")), None)
    if data is None:
        raise SystemExit("the package has no data.tar member")
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            if member.isfile():
                files[member.name.removeprefix("./")] = tar.extractfile(member).read()
    return files


def source_from(args_source: Path | None, package: str, version: str, sha256: str) -> bytes:
    """The package's checked bytes: from --source, or downloaded with apt-get into a temporary folder."""
    if args_source is not None:
        if not args_source.is_file():
            raise SystemExit(f"--source {args_source}: no such file")
        return checked(args_source, sha256)
    with tempfile.TemporaryDirectory(prefix="dapt-deb-") as tmp:
        return checked(download(package, version, Path(tmp)), sha256)
