"""Refuse every non-loopback network connection in this process (and, through PYTHONPATH, in every
Python process it starts: papermill's kernels too). Attempts are appended to $RAGFT_NETGUARD_LOG,
which loading the guard creates.

Loopback stays open: Jupyter kernels talk to papermill over 127.0.0.1.
"""

import ipaddress
import os
import socket
import traceback

_LOG = os.environ.get("RAGFT_NETGUARD_LOG")
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


if _LOG:  # the log exists once the guard is loaded, so that an empty log says "guarded, no attempt"
    os.makedirs(os.path.dirname(os.path.abspath(_LOG)), exist_ok=True)
    open(_LOG, "a").close()


def _record(what: str) -> None:
    if _LOG:
        with open(_LOG, "a") as f:
            f.write(f"{what}\n{''.join(traceback.format_stack(limit=8))}\n")


def _is_local(host) -> bool:
    if host is None:
        return True
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def _guard(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
        _record(f"connect {address!r}")
        raise ConnectionRefusedError(f"network disabled by tests/netguard: connect to {address!r}")


def connect(self, address):
    _guard(self, address)
    return _connect(self, address)


def connect_ex(self, address):
    _guard(self, address)
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    if not _is_local(host):
        _record(f"getaddrinfo {host!r}")
        raise socket.gaierror(socket.EAI_NONAME, f"network disabled by tests/netguard: lookup of {host!r}")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
