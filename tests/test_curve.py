"""CURVE: only consumers whose public keys the publisher lists receive anything."""
import shutil

import pytest

from pipeline import keys
from pipeline.config import PublishSection
from pipeline.publisher import Publisher
from tests.wire_helpers import Consumer, make_record, start_publisher, stop_publisher, warm_up

pytestmark = pytest.mark.usefixtures("ray_cluster")

SILENCE_S = 1.5  # how long the refused consumers are watched while frames go out


def make_consumer_keys(key_root, name: str, server_dir, listed: bool):
    """A consumer's key directory, holding the server's public key; listed on the server or not."""
    consumer_dir = key_root / name
    assert keys.main([str(consumer_dir), "--name", name]) == 0
    shutil.copy(server_dir / "server.key", consumer_dir / "server.key")
    if listed:
        shutil.copy(consumer_dir / f"{name}.key", server_dir / "clients" / f"{name}.key")
    return consumer_dir


def publish_cam1(publisher, consumer: Consumer, frames: int) -> list[int]:
    """Publishes ``frames`` frames of cam1 once ``consumer`` receives; the seqs it received."""
    warm_frames = warm_up(publisher, [consumer])
    for seq in range(frames):
        publisher.publish.remote(make_record("cam1", seq))
    publisher.end_stream.remote("cam1", frames)
    publisher.end_stream.remote("warmup", warm_frames)
    return [frame.seq for frame in consumer if frame.stream == "cam1"]


@pytest.mark.slow
def test_only_listed_consumers_receive(tmp_path, capsys):
    server_dir = tmp_path / "server"
    assert keys.main([str(server_dir)]) == 0
    assert f"{server_dir / 'clients'}/" in capsys.readouterr().out
    alice = make_consumer_keys(tmp_path, "alice", server_dir, listed=True)
    mallory = make_consumer_keys(tmp_path, "mallory", server_dir, listed=False)

    publisher, endpoint = start_publisher(curve_keys=str(server_dir))
    with Consumer(endpoint, curve_keys=alice, timeout=30) as listed, \
            Consumer(endpoint, curve_keys=mallory) as unlisted, Consumer(endpoint) as plain:
        received = publish_cam1(publisher, listed, 5)
        assert unlisted.receive(timeout=SILENCE_S) is None
        assert plain.receive(timeout=SILENCE_S) is None
    stop_publisher(publisher)
    assert received == [0, 1, 2, 3, 4]


def test_missing_key_directory_and_empty_client_list_are_one_line(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(keys.CurveKeyError, match=rf"^curve keys {missing}: no such directory"):
        Publisher(PublishSection(endpoint="tcp://127.0.0.1:*", curve_keys=str(missing)))
    keys.main([str(tmp_path / "server")])
    with pytest.raises(keys.CurveKeyError, match="no consumer public keys in .*clients/"):
        Publisher(PublishSection(endpoint="tcp://127.0.0.1:*", curve_keys=str(tmp_path / "server")))


def test_consumer_directory_needs_the_servers_key_and_one_pair(tmp_path):
    keys.main([str(tmp_path / "alice"), "--name", "alice"])
    with pytest.raises(keys.CurveKeyError, match="missing server.key"):
        Consumer("tcp://127.0.0.1:9", curve_keys=tmp_path / "alice")
    keys.main([str(tmp_path / "alice"), "--name", "bob"])
    keys.main([str(tmp_path / "alice"), "--name", "server"])
    with pytest.raises(keys.CurveKeyError, match=r"expected one consumer key pair .*found 2"):
        Consumer("tcp://127.0.0.1:9", curve_keys=tmp_path / "alice")


def test_keys_cli_never_overwrites(tmp_path, capsys):
    assert keys.main([str(tmp_path)]) == 0
    before = (tmp_path / "server.key_secret").read_bytes()
    assert keys.main([str(tmp_path)]) == 2
    assert "already exists, not overwriting it" in capsys.readouterr().err
    assert (tmp_path / "server.key_secret").read_bytes() == before


@pytest.mark.slow
def test_the_publishers_own_key_pair_may_subscribe_and_no_other_unlisted_one(tmp_path):
    """What the view of `maskstream run --view` connects with: the publisher allows its own key
    pair besides its clients/ (only the publisher holds its secret key)."""
    server_dir = tmp_path / "server"
    keys.main([str(server_dir)])
    make_consumer_keys(tmp_path, "alice", server_dir, listed=True)  # a publisher needs one listed consumer
    mallory = make_consumer_keys(tmp_path, "mallory", server_dir, listed=False)
    own = keys.own_client_keys(server_dir)
    assert own[0] == own[2]  # its own public key, as its client key and as the server's

    publisher, endpoint = start_publisher(curve_keys=str(server_dir))
    with Consumer(endpoint, curve_keys=own, timeout=30) as itself, Consumer(endpoint, curve_keys=mallory) as unlisted:
        received = publish_cam1(publisher, itself, 3)
        assert unlisted.receive(timeout=SILENCE_S) is None
    stop_publisher(publisher)
    assert received == [0, 1, 2]
