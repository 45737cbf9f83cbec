"""Episode <-> protobuf: exact round trips, tensors on the wire, and every validation error."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from store_harness import make_episode
from mtopt.episode_codec import (
    EpisodeDecodeError,
    decode_episode,
    decode_image,
    encode_episode,
    encode_image,
    episode_from_proto,
    episode_to_proto,
    image_header,
    parse_episode,
    tensor_from_proto,
    tensor_to_proto,
    validate_episode,
)
from mtopt.image_bytes import png_shape
from mtopt.tasks import TaskCatalogue
from mtopt.v1 import common_pb2 as pb


@pytest.fixture(scope="module")
def tasks():
    return TaskCatalogue.load()


def test_png_round_trip_is_exact(tasks):
    ep = make_episode(steps=5, size=(24, 32), seed=1)
    ep.actions[-1, 3] = 1.0  # TERMINATE
    msg = episode_to_proto(ep, policy_name="cem", ground_truth_success={"lift-red": True, "lift-blue": False})
    assert msg.terminated_by_policy and msg.policy_name == "cem" and msg.ground_truth_success["lift-red"]
    assert msg.steps[0].image.encoding == pb.IMAGE_ENCODING_PNG
    assert (msg.steps[0].image.height, msg.steps[0].image.width, msg.steps[0].image.channels) == (24, 32, 3)
    back = decode_episode(msg.SerializeToString(), catalogue=tasks)
    np.testing.assert_array_equal(back.images, ep.images)
    np.testing.assert_array_equal(back.states, ep.states)
    np.testing.assert_array_equal(back.actions, ep.actions)
    assert (back.episode_id, back.robot_id, back.task, back.policy_version) == (ep.episode_id, ep.robot_id, ep.task, 3)
    assert back.start_time == pytest.approx(ep.start_time) and back.end_time == pytest.approx(ep.end_time)
    assert back.metadata == {"seed": "1"}


def test_jpeg_round_trip_is_close():
    smooth = np.zeros((5, 64, 64, 3), np.uint8)
    smooth[:] = np.linspace(0, 255, 64, dtype=np.uint8)[None, None, :, None]
    ep = make_episode(steps=4, size=(64, 64))
    ep.images = smooth
    jpeg = encode_episode(ep, image_format="jpeg", jpeg_quality=90)
    png = encode_episode(ep, image_format="png")
    back = decode_episode(jpeg)
    assert episode_to_proto(ep, image_format="jpeg").steps[0].image.encoding == pb.IMAGE_ENCODING_JPEG
    assert np.abs(back.images.astype(int) - smooth).mean() < 3
    assert png != jpeg
    with pytest.raises(ValueError, match="image_format"):
        encode_episode(ep, image_format="bmp")


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "uint8", "int8", "int32", "int64", "bool"])
def test_tensors_are_little_endian_bytes_with_dtype_and_shape(dtype):
    a = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    t = tensor_to_proto(a)
    assert list(t.shape) == [2, 3, 4]
    assert t.data == a.astype(a.dtype.newbyteorder("<")).tobytes()
    np.testing.assert_array_equal(tensor_from_proto(t), a)
    big_endian = a.astype(a.dtype.newbyteorder(">"))
    assert tensor_to_proto(big_endian).data == t.data
    scalar = tensor_to_proto(np.float32(2.5))
    assert list(scalar.shape) == [] and tensor_from_proto(scalar) == np.float32(2.5)


def test_tensor_validation():
    t = tensor_to_proto(np.zeros(4, np.float32))
    with pytest.raises(EpisodeDecodeError, match="must be float64"):
        tensor_from_proto(t, dtype=np.float64)
    with pytest.raises(EpisodeDecodeError, match=r"must have shape \(3,\)"):
        tensor_from_proto(t, shape=(3,))
    t.data = t.data[:-1]
    with pytest.raises(EpisodeDecodeError, match="needs 16 bytes, got 15"):
        tensor_from_proto(t)
    with pytest.raises(EpisodeDecodeError, match="not a valid tensor dtype"):
        tensor_from_proto(pb.Tensor(dtype=pb.DTYPE_UNSPECIFIED, shape=[1], data=b"x"))
    with pytest.raises(ValueError, match="no mtopt.v1.DType"):
        tensor_to_proto(np.zeros(2, np.complex64))


def test_image_headers_are_checked_before_decoding():
    img = encode_image(np.zeros((10, 20, 3), np.uint8))
    assert image_header(img.data) == ("png", 10, 20, 8)
    jpg = encode_image(np.zeros((10, 20, 3), np.uint8), "jpeg")
    assert image_header(jpg.data) == ("jpeg", 10, 20, 8)
    # A tiny file that claims to be a huge image is refused without allocating it.
    bomb = bytearray(img.data)
    bomb[16:24] = struct.pack(">II", 60000, 60000)
    with pytest.raises(EpisodeDecodeError, match="declared 10x20 but the file is 60000x60000"):
        decode_image(pb.Image(data=bytes(bomb), encoding=pb.IMAGE_ENCODING_PNG, height=10, width=20, channels=3))
    with pytest.raises(EpisodeDecodeError, match="exceeds the maximum side"):
        decode_image(pb.Image(data=bytes(bomb), encoding=pb.IMAGE_ENCODING_PNG, height=60000, width=60000, channels=3))
    with pytest.raises(EpisodeDecodeError, match="neither PNG nor JPEG"):
        decode_image(pb.Image(data=b"GIF89a....", encoding=pb.IMAGE_ENCODING_PNG, height=1, width=1, channels=3))
    with pytest.raises(EpisodeDecodeError, match="declared IMAGE_ENCODING_JPEG but the data is PNG"):
        decode_image(pb.Image(data=img.data, encoding=pb.IMAGE_ENCODING_JPEG, height=10, width=20, channels=3))
    with pytest.raises(EpisodeDecodeError, match="8-bit"):
        ok, png16 = cv2.imencode(".png", np.zeros((10, 20, 3), np.uint16))
        decode_image(pb.Image(data=png16.tobytes(), encoding=pb.IMAGE_ENCODING_PNG, height=10, width=20, channels=3))


def _msg(**kw):
    return episode_to_proto(make_episode(**kw))


@pytest.mark.parametrize(
    "mutate, reason, message",
    [
        (lambda m: setattr(m, "episode_id", ""), "invalid_id", "episode_id ''"),
        (lambda m: setattr(m, "robot_id", "a/b"), "invalid_id", "robot_id 'a/b'"),
        (lambda m: setattr(m, "task", "juggle"), "unknown_task", "unknown task 'juggle'; known tasks: lift-any"),
        (lambda m: setattr(m, "task", ""), "unknown_task", "task is empty"),
        (lambda m: m.ClearField("steps"), "malformed", "at least one step"),
        (lambda m: m.ClearField("final_image"), "malformed", "final_image"),
        (lambda m: m.steps[0].action.CopyFrom(tensor_to_proto(np.array([0, 0, np.nan, 0], np.float32))), "action", "NaN"),
        (lambda m: m.steps[2].action.CopyFrom(tensor_to_proto(np.array([0, -1.01, 0, 0], np.float32))), "action", "steps[2].action"),
        (lambda m: m.steps[0].action.CopyFrom(tensor_to_proto(np.zeros(5, np.float32))), "action", "shape (4,)"),
        (lambda m: m.steps[1].state_features.CopyFrom(tensor_to_proto(np.array([np.nan, 0], np.float32))), "state", "steps[1].state_features"),
        (lambda m: m.steps[1].image.CopyFrom(encode_image(np.zeros((16, 16, 3), np.uint8))), None, None),
        (lambda m: m.steps[1].image.CopyFrom(encode_image(np.zeros((8, 16, 3), np.uint8))), "image", "shape must be (16, 16, 3)"),
    ],
)
@pytest.mark.parametrize("check", [episode_from_proto, validate_episode])
def test_decoding_rejects_bad_episodes(tasks, mutate, reason, message, check):
    msg = _msg()
    mutate(msg)
    if reason is None:
        check(msg, catalogue=tasks)
        return
    with pytest.raises(EpisodeDecodeError) as err:
        check(msg, catalogue=tasks)
    assert err.value.reason == reason
    assert message in str(err.value)


def test_validate_episode_counts_the_steps_without_decoding(tasks):
    msg = _msg()
    assert validate_episode(msg, catalogue=tasks) == len(msg.steps) == episode_from_proto(msg, catalogue=tasks).num_steps


@pytest.mark.parametrize("image", [
    np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8),  # colour
    np.random.default_rng(1).integers(0, 256, (9, 7), dtype=np.uint8),  # grey
    np.random.default_rng(2).integers(0, 256, (5, 6, 4), dtype=np.uint8),  # with alpha
])
@pytest.mark.parametrize("compression", [0, 1, 9])
def test_png_shape_is_the_shape_opencv_decodes(image, compression):
    ok, png = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    decoded = cv2.imdecode(png, cv2.IMREAD_UNCHANGED)
    assert png_shape(png.tobytes()) == (decoded.shape + (1,))[:3]


def test_png_shape_finds_what_decoding_finds():
    """Every single-byte corruption of a PNG that png_shape passes decodes, to that shape."""
    image = np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    image[4:12, 4:12] = 200  # some structure, so the data compresses
    ok, png = cv2.imencode(".png", image)
    data = png.tobytes()
    rng = np.random.default_rng(4)
    passed = 0
    for i in list(range(len(data))) + list(rng.integers(0, len(data), 200)):
        bad = bytearray(data)
        bad[i] ^= int(rng.integers(1, 256))
        try:
            shape = png_shape(bytes(bad))
        except ValueError:
            continue
        passed += 1
        decoded = cv2.imdecode(np.frombuffer(bytes(bad), np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded is not None and shape in (decoded.shape, None), i
    assert passed < 10  # nearly every corruption is caught (the rest: bytes no check covers)
    for broken, message in [(data[:-20], "truncated"), (data[:40], "truncated"), (data[8:], "signature")]:
        with pytest.raises(ValueError, match=message):
            png_shape(broken)
    palette = bytearray(data)
    palette[25] = 3  # colour type 3 (palette): left to the decoder
    palette[29:33] = struct.pack(">I", zlib.crc32(bytes(palette[12:29])))
    assert png_shape(bytes(palette)) is None


def test_limits_and_malformed_bytes():
    with pytest.raises(EpisodeDecodeError, match="do not parse") as err:
        parse_episode(b"\xff" * 50)
    assert err.value.reason == "malformed"
    with pytest.raises(EpisodeDecodeError, match="more than the maximum 2") as err:
        episode_from_proto(_msg(steps=3), max_steps=2)
    assert err.value.reason == "too_large"
    with pytest.raises(EpisodeDecodeError, match=r"shape must be \(8, 8, 3\)"):
        episode_from_proto(_msg(), image_shape=(8, 8, 3))
    with pytest.raises(ValueError, match="actions must be finite"):
        ep = make_episode()
        ep.actions[0, 0] = np.nan
        episode_to_proto(ep)  # the robot side refuses to encode a bad episode
