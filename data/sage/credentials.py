"""SAGE storage credentials (HTTP Basic: portal user name + access token) for `python -m data.sage.download`.

Read from SAGE_USER + SAGE_TOKEN, else from the `~/.netrc` entry for the storage host. A netrc `default`
entry is used only for the real SAGE storage host, never for another --storage-url. The secret lives only
in `Credentials.header()`: never in a repr, a message, a log line or a file.
"""

from __future__ import annotations

import base64
import netrc
import os
import stat
from pathlib import Path
from urllib.parse import urlsplit

SAGE_STORAGE_HOST = "storage.sagecontinuum.org"


class CredentialsError(RuntimeError):
    """~/.netrc exists but cannot be used; the message says why and what to do (it never quotes a token)."""


class Credentials:
    """HTTP Basic credentials for one storage origin. The secret lives only in `header()`."""

    def __init__(self, user: str, token: str, source: str):
        self._header = "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()
        self.source = source

    def header(self) -> str:
        return self._header

    def __repr__(self) -> str:
        return f"Credentials(from {self.source}, hidden)"


def find_credentials(storage_url: str) -> Credentials | None:
    """SAGE_USER + SAGE_TOKEN from the environment, else the `~/.netrc` entry for the storage host."""
    user, token = os.environ.get("SAGE_USER"), os.environ.get("SAGE_TOKEN")
    if user and token:
        return Credentials(user, token, "SAGE_USER/SAGE_TOKEN")
    host = (urlsplit(storage_url).hostname or "").lower()
    path = Path(os.path.expanduser("~")) / ".netrc"
    fix = "fix it or set SAGE_USER/SAGE_TOKEN"
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CredentialsError(f"{path} cannot be read ({e.strerror}); {fix}") from None
    if not stat.S_ISREG(mode):
        raise CredentialsError(f"{path} is not a file (a directory?); {fix}")
    if mode & 0o077:  # Python's netrc refuses such a file with a message that gives no line
        raise CredentialsError(f"{path} is readable by other users (mode {stat.S_IMODE(mode):04o}): "
                               f"run `chmod 600 {path}`, or set SAGE_USER/SAGE_TOKEN")
    try:
        parsed = netrc.netrc(str(path))
    except netrc.NetrcParseError as e:  # its message can quote a token: give only the place
        raise CredentialsError(f"{path} could not be parsed (line {e.lineno}); {fix}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CredentialsError(f"{path} cannot be read ({type(e).__name__}); {fix}") from None
    entry = parsed.hosts.get(host)
    if entry is None and host == SAGE_STORAGE_HOST:
        entry = parsed.authenticators(host)  # falls back to the `default` entry
    if entry and entry[0] and entry[2]:
        return Credentials(entry[0], entry[2], f"~/.netrc ({host})")
    return None
