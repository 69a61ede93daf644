"""CURVE key pairs for an encrypted publisher and its allowed consumers (pyzmq's ``zmq.auth``).

Key directories:

- the publisher's (``maskstream run --curve-keys DIR``): ``DIR/server.key_secret``, its key pair,
  and ``DIR/clients/*.key``, the public key of each consumer allowed to receive;
- a consumer's (``maskstream consume ... --curve-keys DIR``): ``DIR/server.key``, the
  publisher's public key, and exactly one ``DIR/<name>.key_secret``, its own key pair.

``maskstream keys DIR [--name NAME]`` makes one pair, ``NAME.key`` (public) and
``NAME.key_secret`` (secret), and says where the files go.
"""
import argparse
import sys
from pathlib import Path

import zmq.auth

from models.errors import CurveKeyError, command

SERVER_NAME = "server"
CLIENTS_DIR = "clients"


def load_server_keys(key_dir: str | Path) -> tuple[bytes, bytes, Path]:
    """The publisher's (public key, secret key, directory of allowed clients' public keys)."""
    key_dir = _existing_dir(key_dir)
    public, secret = _load_key_pair(key_dir / f"{SERVER_NAME}.key_secret", key_dir)
    clients = key_dir / CLIENTS_DIR
    if not clients.is_dir() or not any(clients.glob("*.key")):
        raise CurveKeyError(f"curve keys {key_dir}: no consumer public keys in {clients}/ "
                            f"(copy each consumer's <name>.key there)")
    return public, secret, clients


def load_client_keys(key_dir: str | Path) -> tuple[bytes, bytes, bytes]:
    """A consumer's (public key, secret key, publisher's public key)."""
    key_dir = _existing_dir(key_dir)
    server_file = key_dir / f"{SERVER_NAME}.key"
    if not server_file.is_file():
        raise CurveKeyError(f"curve keys {key_dir}: missing {server_file.name} "
                            f"(copy the publisher's public key there)")
    server_public, _ = zmq.auth.load_certificate(server_file)
    own = sorted(path for path in key_dir.glob("*.key_secret") if path.stem != SERVER_NAME)
    if len(own) != 1:
        raise CurveKeyError(f"curve keys {key_dir}: expected one consumer key pair "
                            f"(<name>.key_secret), found {len(own)}")
    public, secret = _load_key_pair(own[0], key_dir)
    return public, secret, server_public


def own_client_keys(key_dir: str | Path) -> tuple[bytes, bytes, bytes]:
    """The publisher's own key pair as a consumer's keys (public, secret, publisher's public key):
    the publisher allows it besides its clients/, so that the view a run starts beside itself
    (``maskstream run --view``) needs no key of its own."""
    public, secret, _ = load_server_keys(key_dir)
    return public, secret, public


def _existing_dir(key_dir: str | Path) -> Path:
    key_dir = Path(key_dir)
    if not key_dir.is_dir():
        raise CurveKeyError(f"curve keys {key_dir}: no such directory "
                            f"(make keys with maskstream keys {key_dir})")
    return key_dir


def _load_key_pair(secret_file: Path, key_dir: Path) -> tuple[bytes, bytes]:
    """Public and secret key from a ``.key_secret`` file, or a one-line error naming it."""
    if not secret_file.is_file():
        raise CurveKeyError(f"curve keys {key_dir}: missing {secret_file.name} "
                            f"(make it with maskstream keys {key_dir} --name {secret_file.stem})")
    public, secret = zmq.auth.load_certificate(secret_file)
    if not secret:
        raise CurveKeyError(f"curve keys {secret_file}: holds no secret key")
    return public, secret


def make_key_pair(key_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Writes ``NAME.key`` and ``NAME.key_secret`` in ``key_dir`` (never overwriting)."""
    key_dir = Path(key_dir)
    public_file, secret_file = key_dir / f"{name}.key", key_dir / f"{name}.key_secret"
    for path in (public_file, secret_file):
        if path.exists():
            raise CurveKeyError(f"curve keys {path}: already exists, not overwriting it")
    key_dir.mkdir(parents=True, exist_ok=True)
    if name == SERVER_NAME:
        (key_dir / CLIENTS_DIR).mkdir(exist_ok=True)
    public, secret = zmq.auth.create_certificates(key_dir, name)
    return Path(public), Path(secret)


def where_keys_go(key_dir: Path, name: str) -> str:
    """Instructions for the pair just made, by role."""
    if name == SERVER_NAME:
        return (f"Publisher keys in {key_dir}: run the pipeline with --curve-keys {key_dir}.\n"
                f"Give {key_dir / 'server.key'} (public) to each consumer, into its key directory.\n"
                f"Allow a consumer by copying its <name>.key (public) into {key_dir / CLIENTS_DIR}/.\n"
                f"{key_dir / 'server.key_secret'} stays with the publisher.")
    return (f"Consumer keys in {key_dir}: copy {key_dir / (name + '.key')} (public) into the "
            f"publisher's {CLIENTS_DIR}/ directory,\nand the publisher's server.key into {key_dir}; "
            f"then consume with --curve-keys {key_dir}.\n"
            f"{key_dir / (name + '.key_secret')} stays with this consumer.")


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="maskstream keys",
        description="Make a CURVE key pair (NAME.key public, NAME.key_secret secret) for an "
                    "encrypted publisher (--name server, the default) or a consumer (any other name).")
    parser.add_argument("dir", help="directory to write the key pair into (created if missing)")
    parser.add_argument("--name", default=SERVER_NAME,
                        help="'server' for the publisher's pair, otherwise the consumer's name")
    args = parser.parse_args(argv)
    public, secret = make_key_pair(args.dir, args.name)
    print(f"wrote {public} and {secret}")
    print(where_keys_go(Path(args.dir), args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
