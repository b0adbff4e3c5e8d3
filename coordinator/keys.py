"""CURVE encryption and authentication: key pairs, and which workers may connect.

    python -m coordinator.keys DIR NAME
        writes DIR/NAME.key (the public key: share it) and DIR/NAME.key_secret
        (public + secret: keep it on the machine that uses it, mode 0600).
    python -m coordinator.keys DIR NAME --if-missing
        the same, but leaves an existing pair alone (container entrypoints).
    python -m coordinator.keys --k8s-secrets [--namespace NS] > secrets.yaml
        prints fresh Kubernetes Secret manifests: the coordinator's key pair and
        the admitted worker public keys, and the worker key pair(s).
    python -m coordinator.keys --checkpoint-key FILE
        writes 32 random bytes (mode 0600) for `--checkpoint-key` (HMAC-signed checkpoints).

The coordinator gets its own `.key_secret` and a directory of the public `.key`
files of the workers it admits; a worker gets its own `.key_secret` and the
coordinator's public `.key`.  With CURVE on, every byte is encrypted, and a peer
whose key is not in the directory, or which does not know the coordinator's
public key, fails the handshake: none of its messages ever reaches the
coordinator's code.  Turn it on whenever workers reach the coordinator over a
network that is not private to the run.

The ZAP handler (libzmq's hook for authentication) runs in a thread; the socket
enforces its domain, so if that thread is gone every handshake fails instead of
libzmq admitting any key.  The handler gives each connection the z85 public key
of its peer as ZeroMQ `User-Id`, which `sender_key` reads off a received frame:
the coordinator can tell which key sent each message.  The allow-list can be
re-read (`Gatekeeper.reload`) to admit or revoke keys without a restart; a
revoked key fails every new handshake, and `Gatekeeper.allows` tells the
coordinator to stop listening to its existing connections.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import sys
import tempfile
import threading
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


ZAP_DOMAIN = "lenet5"  # the ZAP domain of the worker socket; the handler answers for this domain only


@dataclass(frozen=True)
class CurveServer:
    keys: KeyPair
    allowed: frozenset[bytes] = field(default_factory=frozenset)  # z85 public keys of admitted workers
    # Re-read by Gatekeeper.reload (SIGHUP): the admitted set becomes the directory's
    # keys plus `fixed` (keys that no directory holds, e.g. local workers' own).
    authorized_dir: Path | None = None
    fixed: frozenset[bytes] = field(default_factory=frozenset)


@dataclass(frozen=True)
class CurveClient:
    keys: KeyPair
    server_public: bytes


def require_curve() -> None:
    if not zmq.has("curve"):
        raise UsageError("this libzmq was built without CURVE support: cannot use CURVE keys")


def certificate(public: bytes, secret: bytes | None = None) -> str:
    """A key file in ZeroMQ's certificate format (what `zmq.auth.load_certificate` reads)."""
    text = f'metadata\ncurve\n    public-key = "{public.decode()}"\n'
    if secret is not None:
        text += f'    secret-key = "{secret.decode()}"\n'
    return text


def _write_whole(path: Path, text: str, mode: int) -> None:
    """Write `path` through an exclusively created temporary (0600 until complete) and a rename: never half a key."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text.encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate(directory: Path, name: str, if_missing: bool = False) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret (0600) into `directory`.

    Each file appears whole (temporary + rename); the public one last, so a reader
    waiting for NAME.key finds the pair complete.  With `if_missing`, a complete
    existing pair is kept.
    """
    require_curve()
    public_path, secret_path = directory / f"{name}.key", directory / f"{name}.key_secret"
    if if_missing and public_path.is_file() and secret_path.is_file():
        return public_path, secret_path
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    _write_whole(secret_path, certificate(public, secret), 0o600)
    _write_whole(public_path, certificate(public), 0o644)
    return public_path, secret_path


def write_public(path: Path, public: bytes) -> Path:
    """A public-key file in ZeroMQ's certificate format (what `load_public` reads)."""
    path.write_text(certificate(public))
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


def load_allowed(directory: Path, allow_empty: bool = False) -> frozenset[bytes]:
    """The public keys of the `.key` files in `directory`.

    Empty is an error at start (a run nobody can join is a mistake); a reload may
    allow it, since revoking every key is a legitimate, safe, operator action.
    """
    if not directory.is_dir():
        raise UsageError(f"authorised keys directory {directory}: not a directory")
    keys = frozenset(load_public(p) for p in sorted(directory.glob("*.key")))
    if not keys and not allow_empty:
        raise UsageError(f"authorised keys directory {directory} holds no .key files")
    return keys


class AllowList:
    """The set of admitted z85 public keys, shared by the ZAP thread and the event loop.

    pyzmq's authenticator calls `callback` from its own thread for every handshake;
    `reload` swaps the whole set under a lock, so a handshake sees the old set or
    the new one, never a mixture.
    """

    def __init__(self, keys: frozenset[bytes], directory: Path | None = None,
                 fixed: frozenset[bytes] = frozenset()):
        self._keys = frozenset(keys) | fixed
        self._directory = directory
        self._fixed = fixed
        self._lock = threading.Lock()

    @property
    def keys(self) -> frozenset[bytes]:
        with self._lock:
            return self._keys

    def __contains__(self, key: object) -> bool:
        return key in self.keys

    def callback(self, domain: str, key: bytes) -> bool:
        return domain == ZAP_DOMAIN and key in self

    def reload(self) -> tuple[frozenset[bytes], frozenset[bytes]]:
        """Re-read the directory; returns (added, removed).  On error the old set stays and UsageError says why."""
        if self._directory is None:
            raise UsageError("no authorised keys directory to reload")
        new = load_allowed(self._directory, allow_empty=True) | self._fixed
        with self._lock:
            old, self._keys = self._keys, new
        return new - old, old - new


class Gatekeeper:
    """The running ZAP handler of one CURVE server socket and its allow-list."""

    def __init__(self, authenticator: ThreadAuthenticator, allow_list: AllowList):
        self.authenticator = authenticator
        self.allow_list = allow_list

    def allows(self, key: bytes | None) -> bool:
        """Whether messages sent with this User-Id (see `sender_key`) may still be read."""
        return key is not None and key in self.allow_list

    def reload(self) -> tuple[frozenset[bytes], frozenset[bytes]]:
        return self.allow_list.reload()

    def alive(self) -> bool:
        return self.authenticator.is_alive()

    def stop(self) -> None:
        self.authenticator.stop()


def secure_server(sock: zmq.Socket, curve: CurveServer, context: zmq.Context) -> Gatekeeper:
    """Make `sock` (before bind) a CURVE server admitting `curve.allowed`; returns its running gatekeeper."""
    require_curve()
    allow_list = AllowList(curve.allowed, curve.authorized_dir, curve.fixed)
    auth = ThreadAuthenticator(context)
    auth.start()
    # The default curve_user_id of pyzmq's authenticator is the z85 public key:
    # that becomes the User-Id of every message from the connection.
    auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=allow_list)
    sock.curve_secretkey = curve.keys.secret
    sock.curve_publickey = curve.keys.public
    sock.curve_server = True
    sock.zap_domain = ZAP_DOMAIN.encode()
    # Without this, libzmq admits every key when no ZAP handler answers (e.g. its thread died).
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    return Gatekeeper(auth, allow_list)


def sender_key(frame: zmq.Frame) -> bytes | None:
    """The z85 public key that sent `frame` (received with copy=False on a CURVE socket); None without CURVE."""
    try:
        user_id = frame.get("User-Id")
    except zmq.ZMQError:  # no such property: the connection was not authenticated by ZAP
        return None
    return user_id.encode() if isinstance(user_id, str) and user_id else None


def is_loopback_endpoint(endpoint: str) -> bool:
    """Whether a bind endpoint is reachable from this host only.

    True for ipc:// and inproc:// and for tcp:// on 127.0.0.0/8, ::1 or `localhost`;
    False for wildcards (*, 0.0.0.0, ::), interface names and every other address,
    including ones that cannot be parsed (refusing too much is the safe side).
    """
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        return False
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False  # pgm, epgm, udp, ws, ...: multicast or network transports
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    host = host.removeprefix("[").removesuffix("]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secure_client(sock: zmq.Socket, curve: CurveClient) -> None:
    """Make `sock` (before connect) a CURVE client of the server with `curve.server_public`."""
    sock.curve_secretkey = curve.keys.secret
    sock.curve_publickey = curve.keys.public
    sock.curve_serverkey = curve.server_public


# Kubernetes Secrets read by deploy/k8s (names and keys must match the manifests' volumes).
K8S_NAMESPACE = "lenet5"
K8S_COORDINATOR_SECRET = "lenet5-coordinator-curve"  # coordinator.key_secret: the coordinator only
K8S_AUTHORIZED_SECRET = "lenet5-authorized-workers"  # worker.key: the public keys admitted
K8S_WORKER_SECRET = "lenet5-worker-curve"  # worker.key_secret + coordinator.key: the workers


def k8s_secrets(namespace: str = K8S_NAMESPACE) -> list[dict]:
    """Fresh key pairs as three Secret objects (see the K8S_* names).

    One worker key pair for the whole Deployment: its replicas share one pod
    template, so the key is a group credential (README, threat model).
    """
    require_curve()
    server_public, server_secret = zmq.curve_keypair()
    worker_public, worker_secret = zmq.curve_keypair()

    def secret(name: str, files: dict[str, str]) -> dict:
        return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {"app.kubernetes.io/part-of": "lenet5"}},
                "stringData": files}

    return [
        secret(K8S_COORDINATOR_SECRET, {"coordinator.key_secret": certificate(server_public, server_secret)}),
        secret(K8S_AUTHORIZED_SECRET, {"worker.key": certificate(worker_public)}),
        secret(K8S_WORKER_SECRET, {"worker.key_secret": certificate(worker_public, worker_secret),
                                   "coordinator.key": certificate(server_public)}),
    ]


def _yaml_documents(objects: list[dict]) -> str:
    """The Secrets as YAML without a YAML library (not a runtime dependency): JSON is valid YAML."""
    return "".join(f"---\n{json.dumps(o, indent=2)}\n" for o in objects)


def write_checkpoint_key(path: Path) -> Path:
    """A new checkpoint HMAC key: 256 random bits as 64 hex digits, mode 0600, never overwriting a file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} exists: not overwriting a checkpoint key") from None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coordinator.keys",
                                     description="Generate a CURVE key pair for the coordinator or a worker, "
                                                 "Kubernetes Secrets holding fresh pairs, or a checkpoint HMAC key.")
    parser.add_argument("directory", type=Path, nargs="?", help="where to write NAME.key and NAME.key_secret")
    parser.add_argument("name", nargs="?", help="file name stem, e.g. coordinator or worker-3")
    parser.add_argument("--if-missing", action="store_true", help="keep an existing complete pair")
    parser.add_argument("--k8s-secrets", action="store_true",
                        help="print Kubernetes Secret manifests with fresh keys (kubectl apply -f -)")
    parser.add_argument("--namespace", default=K8S_NAMESPACE, help="namespace of the Secrets (--k8s-secrets)")
    parser.add_argument("--checkpoint-key", type=Path, metavar="FILE", help="write a new checkpoint HMAC key")
    args = parser.parse_args(argv)
    modes = [args.k8s_secrets, args.checkpoint_key is not None, args.directory is not None]
    if sum(modes) != 1:
        raise UsageError("give exactly one of: DIRECTORY NAME, --k8s-secrets, --checkpoint-key FILE")
    if args.k8s_secrets:
        print(_yaml_documents(k8s_secrets(args.namespace)), end="")
        return int(ExitStatus.OK)
    if args.checkpoint_key is not None:
        try:
            print(f"checkpoint key (keep private): {write_checkpoint_key(args.checkpoint_key)}")
        except OSError as err:
            raise UsageError(f"cannot write {args.checkpoint_key}: {err.strerror or err}") from None
        return int(ExitStatus.OK)
    if not args.name or "/" in args.name:
        raise UsageError(f"key name must be a plain file name, got {args.name!r}")
    try:
        public, secret = generate(args.directory, args.name, if_missing=args.if_missing)
    except OSError as err:
        raise UsageError(f"cannot write keys into {args.directory}: {err.strerror or err}") from None
    print(f"public key (share): {public}\nsecret key (keep private): {secret}")
    return int(ExitStatus.OK)


if __name__ == "__main__":
    sys.exit(run_main(main, "coordinator.keys"))
