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


class ProfileError(ConfigError):
    """A site profile that cannot be used: names the file, the key, what is wrong and the fix."""

    def __init__(self, path: str, key: str | None, message: str, fix: str | None = None):
        self.path, self.key, self.message, self.fix = str(path), key, message, fix
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.path}: key '{self.key}'" if self.key else self.path
        return f"{where}: {self.message}" + (f"; fix: {self.fix}" if self.fix else "")


class CommandError(ArihpcError):
    """An external command that failed: carries its argv, exit status, stdout and stderr."""

    def __init__(self, argv: list[str], returncode: int | None, stdout: str, stderr: str,
                 reason: str | None = None):
        self.argv, self.returncode, self.reason = list(argv), returncode, reason
        self.stdout, self.stderr = stdout, stderr
        super().__init__(str(self))

    def __str__(self) -> str:
        import shlex

        what = self.reason or f"exit status {self.returncode}"
        tail = self.stderr.strip().splitlines()[-5:] if self.stderr else []
        return f"command failed ({what}): {shlex.join(self.argv)}" + \
            ("".join(f"\n  stderr: {line}" for line in tail))


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
