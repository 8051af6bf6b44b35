"""Which CASA version made a MOUS's calibration, and which installation of a site runs it."""

from __future__ import annotations

import re
from pathlib import Path

from arihpc.errors import ArihpcError

# README: "CASA version: 4.7.2"; scriptForPI: casa_version = '4.7.2' or
# "...SCRIPT: 4.7.2"; CASA logs: "CASA Version 4.7.2-REL (r39762)" / "casa version 5.1.1-5".
_PATTERNS = (
    re.compile(r"CASA version\s*[:=]?\s*'?(\d+\.\d+\.\d+)", re.I),
    re.compile(r"casa_?version\s*=\s*['\"](\d+\.\d+\.\d+)", re.I),
    re.compile(r"SAME VERSION OF CASA.*?(\d+\.\d+\.\d+)"),
)
_SOURCES = ("README*", "*README*.txt", "script/*scriptForPI*.py", "*scriptForPI*.py",
            "log/casa-*.log", "log/*.log")


class CasaVersionError(ArihpcError):
    """No installation of the CASA version a MOUS needs (class casa-version)."""


def detect_casa_version(delivery: Path) -> tuple[str, Path] | None:
    """The CASA version a delivery says it was made with, and the file that says it."""
    for pattern_glob in _SOURCES:
        for path in sorted(delivery.glob(pattern_glob)):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            for pattern in _PATTERNS:
                match = pattern.search(text)
                if match:
                    return match.group(1), path
    return None


def choose_installation(version: str, installations: dict[str, str]) -> str:
    """The command of the site's installation of ``version`` (exact, or same x.y.z prefix)."""
    for installed, command in installations.items():
        if installed == version or installed.startswith(version + "."):
            return command
    raise CasaVersionError(
        f"arihpc: no CASA installation for version {version}: this site has "
        f"{', '.join(sorted(installations)) or 'none'}")
