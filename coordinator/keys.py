"""CURVE encryption and authentication: key pairs, and which workers may connect.

    python -m coordinator.keys DIR NAME
        writes DIR/NAME.key (the public key: share it) and DIR/NAME.key_secret
        (public + secret: keep it on the machine that uses it, mode 0600).

The coordinator gets its own `.key_secret` and a directory of the public `.key`
files of the workers it admits; a worker gets its own `.key_secret` and the
coordinator's public `.key`.  With CURVE on, every byte is encrypted, and a peer
whose key is not in the directory, or which does not know the coordinator's
public key, fails the handshake: none of its messages ever reaches the
coordinator's code.  Turn it on whenever workers reach the coordinator over a
network that is not private to the run.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from lenet.status import ExitStatus, UsageError, run_main


@dataclass(frozen=True)
class KeyPair:
    public: bytes  # z85-encoded, 40 bytes
    secret: bytes


@dataclass(frozen=True)
class CurveServer:
    keys: KeyPair
    allowed: frozenset[bytes] = field(default_factory=frozenset)  # z85 public keys of admitted workers


@dataclass(frozen=True)
class CurveClient:
    keys: KeyPair
    server_public: bytes


def require_curve() -> None:
    if not zmq.has("curve"):
        raise UsageError("this libzmq was built without CURVE support: cannot use CURVE keys")


def generate(directory: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret (0600) into `directory`."""
    require_curve()
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def write_public(path: Path, public: bytes) -> Path:
    """A public-key file in ZeroMQ's certificate format (what `load_public` reads)."""
    path.write_text(f'metadata\ncurve\n    public-key = "{public.decode()}"\n')
    return path


def _load(path: Path) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot read CURVE key file {path}: {err}") from None


def load_keypair(path: Path) -> KeyPair:
    public, secret = _load(path)
    if secret is None:
        raise UsageError(f"{path} holds no secret key: give the .key_secret file")
    return KeyPair(public, secret)


def load_public(path: Path) -> bytes:
    return _load(path)[0]


def load_allowed(directory: Path) -> frozenset[bytes]:
    if not directory.is_dir():
        raise UsageError(f"authorised keys directory {directory}: not a directory")
    keys = frozenset(load_public(p) for p in sorted(directory.glob("*.key")))
    if not keys:
        raise UsageError(f"authorised keys directory {directory} holds no .key files")
    return keys


class _AllowList:
    """The authenticator's credentials provider: admit exactly these public keys."""

    def __init__(self, keys: frozenset[bytes]):
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


def secure_server(sock: zmq.Socket, curve: CurveServer, context: zmq.Context) -> ThreadAuthenticator:
    """Make `sock` (before bind) a CURVE server admitting `curve.allowed`; returns the running authenticator."""
    require_curve()
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=_AllowList(curve.allowed))
    sock.curve_secretkey = curve.keys.secret
    sock.curve_publickey = curve.keys.public
    sock.curve_server = True
    return auth


def secure_client(sock: zmq.Socket, curve: CurveClient) -> None:
    """Make `sock` (before connect) a CURVE client of the server with `curve.server_public`."""
    sock.curve_secretkey = curve.keys.secret
    sock.curve_publickey = curve.keys.public
    sock.curve_serverkey = curve.server_public


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coordinator.keys",
                                     description="Generate a CURVE key pair for the coordinator or a worker.")
    parser.add_argument("directory", type=Path, help="where to write NAME.key and NAME.key_secret")
    parser.add_argument("name", help="file name stem, e.g. coordinator or worker-3")
    args = parser.parse_args(argv)
    if not args.name or "/" in args.name:
        raise UsageError(f"key name must be a plain file name, got {args.name!r}")
    try:
        public, secret = generate(args.directory, args.name)
    except OSError as err:
        raise UsageError(f"cannot write keys into {args.directory}: {err.strerror or err}") from None
    print(f"public key (share): {public}\nsecret key (keep private): {secret}")
    return int(ExitStatus.OK)


if __name__ == "__main__":
    sys.exit(run_main(main, "coordinator.keys"))
