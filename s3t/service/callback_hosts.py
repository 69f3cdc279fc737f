"""Which hosts erasure status callbacks may be POSTed to (``s3t serve --callback-allow``).

A server that POSTs to whatever URL a caller names can be made to reach what only it can
reach (server-side request forgery: a cloud metadata address, an admin port on loopback, a
service on the private network). So a callback URL is accepted only if its host is on the
operator's list, by name: ``HOST`` (any port), ``HOST:PORT``, ``[IPv6]`` or ``[IPv6]:PORT``,
and ``*.DOMAIN`` (any name under that domain, not the domain itself). Nothing is allowed by
default, loopback and private addresses included: a test receiver on 127.0.0.1 is listed
like any other. Names are compared as written (lowercase, no trailing dot) and addresses as
addresses (``::1`` and ``[0:0::1]`` are one); nothing is resolved here, so a listed name must
be one whose DNS the operator trusts. Redirects are never followed (``subjects.py``).

Checked twice: when a request names the URL (``POST /v1/dsr``: 400, nothing deleted) and
before each delivery (a callback queued in the ledger by another server, or before a restart
with another list, is given up unsent).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

ALLOW_ENV = "S3T_CALLBACK_ALLOW"
FLAG = "--callback-allow"
DEFAULT_PORTS = {"http": 80, "https": 443}


def split_entries(values: Iterable[str] | str) -> tuple[str, ...]:
    """The entries of the option's values, each of which may be a comma list."""
    items = [values] if isinstance(values, str) else list(values)
    return tuple(part.strip() for item in items for part in str(item).replace(" ", ",")
                 .split(",") if part.strip())


def _host(text: str) -> str | ipaddress.IPv4Address | ipaddress.IPv6Address:
    name = text.strip().lower().rstrip(".")
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return name


def parse_entry(entry: str) -> tuple[str | ipaddress.IPv4Address | ipaddress.IPv6Address,
                                     int | None]:
    """(host, port or None) of an allow-list entry; ``ValueError`` saying what to give."""
    try:
        parts = urlsplit("//" + entry.strip())
        port = parts.port
    except ValueError:
        parts, port = None, None
    host = parts.hostname if parts is not None else None
    if parts is None or not host or parts.netloc != entry.strip() or "@" in entry or \
            (port is not None and not 0 < port < 65536):
        raise ValueError(f"{entry!r} is not a host: give HOST, HOST:PORT, [IPv6]:PORT or "
                         "*.DOMAIN (e.g. hooks.example.com:443 or 127.0.0.1)")
    if "*" in host and not (host.startswith("*.") and "*" not in host[2:] and len(host) > 2):
        raise ValueError(f"{entry!r}: a wildcard is only a leading *. (e.g. *.example.com)")
    return _host(host), port


def url_host(url: str) -> tuple[str | ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """(host, port) a callback URL is POSTed to (the scheme's port when none is given)."""
    parts = urlsplit(url)
    port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    return _host(parts.hostname or ""), port


def allowed(url: str, allow: Sequence[str]) -> bool:
    """Whether ``url``'s host (and port) is on the allow list ``allow``."""
    try:
        host, port = url_host(url)
    except ValueError:  # a port that is not a number: no host of the list
        return False
    for entry in allow:
        want, want_port = parse_entry(entry)
        if want_port is not None and want_port != port:
            continue
        if isinstance(want, str) and want.startswith("*."):
            if isinstance(host, str) and host.endswith(want[1:]):
                return True
        elif want == host:
            return True
    return False


def refused(urls: Iterable[str], allow: Sequence[str]) -> list[str]:
    """The URLs of ``urls`` whose host is not allowed."""
    return [url for url in urls if not allowed(url, allow)]


def _netloc(url: str) -> str:
    return urlsplit(url).netloc.rsplit("@", 1)[-1] or url


def _listed(allow: Sequence[str]) -> str:
    return f"it allows only {', '.join(allow)}" if allow else "it allows none"


def not_listed(url: str, allow: Sequence[str]) -> str:
    """Why a queued callback is given up unsent."""
    return f"{_netloc(url)} is not a host {FLAG} lists ({_listed(allow)})"


def refusal(urls: Sequence[str], allow: Sequence[str]) -> str:
    """Why ``urls`` are refused, naming the flag that allows them."""
    hosts = [_netloc(url) for url in urls]
    listed = _listed(allow)
    return (f"status_callback_urls: this server does not send callbacks to "
            f"{', '.join(dict.fromkeys(hosts))} ({listed}): start it with {FLAG} "
            f"{hosts[0]} (or {ALLOW_ENV}) to allow that host; nothing was deleted")
