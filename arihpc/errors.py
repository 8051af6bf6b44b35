"""The arihpc exception hierarchy: every error a user can see derives from ArihpcError."""

from __future__ import annotations


class ArihpcError(Exception):
    """Base of every error arihpc raises on purpose."""


class InvalidUid(ArihpcError, ValueError):
    """A string that is not an ALMA MOUS uid (and must not name a path or a command)."""


class ConfigError(ArihpcError):
    """A configuration file or value that cannot be used."""


class StoreError(ArihpcError):
    """The campaign store cannot be opened or is not what this arihpc expects."""


class CatalogError(ArihpcError):
    """Bad catalog input, located as precisely as the format allows: file, line, field."""

    def __init__(self, path: str, message: str, line: int | None = None, field: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        what = f"field '{self.field}': " if self.field else ""
        return f"{where}: {what}{self.message}"
