"""Debian packages the comparison benchmark runs (nginx with Nchan, wrk): found, or installed.

I/O: runs ``apt-get`` and ``apt-cache`` as subprocesses, only when a program is missing,
so a machine that already has them is left alone. The machine is a fresh Debian one
each time (nothing installed by hand survives), which is why the benchmark installs
what it needs itself instead of asking the reader to.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

_APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


class PackageUnavailable(RuntimeError):
    """apt has no installation candidate for a package the benchmark needs."""

    def __init__(self, package: str, policy: str) -> None:
        super().__init__(
            f"Debian package {package} is not available; apt-cache policy said:\n{policy}"
        )
        self.package = package
        self.policy = policy


def is_present(path: Path) -> bool:
    """Whether ``path`` exists (a file a package installs) or names a program on PATH."""
    return path.exists() if path.is_absolute() else shutil.which(str(path)) is not None


def ensure(packages: Mapping[str, Path]) -> list[str]:
    """Install with apt-get every package whose file is missing; the packages installed.

    Args:
        packages: package name → a file it installs (absolute) or a program it puts
            on PATH; a package is installed only when that is missing.

    Raises:
        PackageUnavailable: apt has no candidate for one of the missing packages; its
            message quotes what ``apt-cache policy`` said.
        subprocess.CalledProcessError: apt-get failed.
    """
    missing = [name for name, path in packages.items() if not is_present(path)]
    if not missing:
        return []
    print(f"installing Debian packages: {' '.join(missing)}", flush=True)
    # The package lists of a fresh machine may be empty or old: update before asking.
    subprocess.run(["apt-get", "update", "-q"], check=True, env=_APT_ENV, stdout=subprocess.DEVNULL)
    for name in missing:
        policy = subprocess.run(
            ["apt-cache", "policy", name], check=False, capture_output=True, text=True
        ).stdout
        if "Candidate:" not in policy or "Candidate: (none)" in policy:
            raise PackageUnavailable(name, policy.strip() or "(nothing)")
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        check=True,
        env=_APT_ENV,
        stdout=subprocess.DEVNULL,
    )
    return missing


def installed_version(package: str) -> str:
    """The installed version of a Debian package, or ``not installed``."""
    answer = subprocess.run(
        ["dpkg-query", "--showformat=${Version}", "--show", package],
        check=False,
        capture_output=True,
        text=True,
    )
    return answer.stdout.strip() if answer.returncode == 0 and answer.stdout else "not installed"
