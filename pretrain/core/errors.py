"""Errors that are the user's to fix: the CLI prints them without a traceback.

Also the words for failures that are not mistakes but that a user can act on: a read-only or full
disk, a permission, a remote store or URL out of reach (`os_error_line`, `unreachable`).
"""

import errno


class UserError(Exception):
    """A mistake in the user's config or data. The message names the culprit and what to do."""


class ConfigError(UserError):
    """The pipeline config is invalid; the message lists every problem with its key path."""


class InputError(UserError):
    """An input file or artifact cannot be used; the message names the file (and line, where known)."""


def unreachable(error: BaseException) -> str | None:
    """Why a remote store, file or service could not be reached, and what to do (one clause); None if `error` is not that.

    File systems and clients raise their own types for the same few causes (botocore, httpx, aiohttp,
    socket), often wrapped in another exception: the chain of causes is searched, by type and by words.
    """
    import socket

    seen: list[BaseException] = []
    while error is not None and error not in seen and len(seen) < 8:
        seen.append(error)
        error = error.__cause__ or error.__context__
    for e in seen:
        name, text = type(e).__name__, str(e)
        module = type(e).__module__.split(".")[0]
        if module == "botocore" and "Credentials" in name:
            return f"no credentials ({name}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        if isinstance(e, socket.gaierror) or "DNS" in name or any(w in text for w in ("Name or service not known", "nodename nor servname",
                                                                                        "Temporary failure in name resolution")):  # fmt: skip
            return f"the host name does not resolve ({name}); check the URL, and that this machine has a network"
        if isinstance(e, ConnectionRefusedError) or any(w in text for w in ("Connection refused", "Connect call failed")):
            return f"the connection was refused ({name}); check the URL, and that the server is up"
        if module in ("httpx", "httpx2", "aiohttp", "requests", "urllib3", "botocore", "aiobotocore") and any(w in name for w in ("Connect", "Timeout", "Endpoint")):
            return f"cannot connect ({name}: {text[:160]}); check the URL and the network"
    return None


# What a user can act on, by errno: the words after the path or URL in the one-line error.
ACTIONABLE = {
    errno.EROFS: "read-only file system; choose a writable place",
    errno.ENOSPC: "no space left on the device; free some, or choose another place",
    errno.EDQUOT: "disk quota exceeded; free some space, or choose another place",
    errno.EACCES: "permission denied; check who owns it, or choose another place",
    errno.EPERM: "operation not permitted; check who owns it, or choose another place",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ECONNREFUSED: "connection refused; is the server running, and is the address right?",
    errno.ETIMEDOUT: "the connection timed out; check the network and the address",
    errno.EHOSTUNREACH: "host unreachable; check the network and the address",
    errno.ENETUNREACH: "network unreachable; check the network",
}


def os_error_line(e: OSError) -> str | None:
    """`PATH: what happened; what to do` for an OSError a user can act on (read-only, full, permission, not found,
    refused), naming the path; None for any other."""
    if e.errno not in ACTIONABLE:
        return None
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{where}: {ACTIONABLE[e.errno]}" if where else ACTIONABLE[e.errno]
