"""The one function every external command goes through: argv list, timeout, no shell."""

from __future__ import annotations

import logging
import subprocess
from typing import Mapping, Sequence

from arihpc.errors import CommandError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0


def run_command(argv: Sequence[str], timeout: float = DEFAULT_TIMEOUT_S,
                env: Mapping[str, str] | None = None, input: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess:
    """Run a short external command and capture its output.

    A missing program, a timeout or (with ``check``) a non-zero exit raises CommandError with
    the argv, exit status, stdout and stderr.
    """
    argv = [str(a) for a in argv]
    log.debug("running %s", argv)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                              input=input, shell=False)
    except FileNotFoundError as e:
        raise CommandError(argv, None, "", str(e), reason=f"{argv[0]} not found") from e
    except subprocess.TimeoutExpired as e:
        raise CommandError(argv, None, _text(e.stdout), _text(e.stderr),
                           reason=f"no answer within {timeout:g} s") from e
    if check and done.returncode != 0:
        raise CommandError(argv, done.returncode, done.stdout, done.stderr)
    return done


def _text(data) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data
