"""Episode <-> ``mtopt.v1.Episode`` protobuf (no torch: robots use this module).

Images are encoded with OpenCV (PNG by default, lossless; JPEG optional, smaller) exactly as the
robot's arrays hold them, so ``cv2.imdecode`` gives back what the policy saw. State features and
actions travel as `Tensor`s: raw little-endian bytes with dtype and shape.

Decoding never trusts the wire: it checks ids, the task against a `TaskCatalogue`, image headers
(before decoding, so a tiny file cannot claim a huge image), decoded image shape and dtype,
tensor dtype/shape/byte length, NaN or out-of-range actions and non-finite states, and raises
`EpisodeDecodeError` (a ValueError) with a message that says what is wrong and a low-cardinality
``reason`` for metrics.

Usage::

    msg = episode_to_proto(episode, image_format="jpeg", policy_name="cem")
    data = msg.SerializeToString()
    ...
    msg = parse_episode(data)                                 # malformed bytes -> error
    episode = episode_from_proto(msg, catalogue=catalogue)    # validated Episode
"""

from __future__ import annotations

import math
import re
from typing import Mapping

import cv2
import numpy as np
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from mtopt.episode import Episode
from mtopt.image_bytes import image_header, png_shape
from mtopt.robot import ACTION_DIM, ACTION_TERMINATE, STATE_DIM
from mtopt.tasks import TaskCatalogue
from mtopt.v1 import common_pb2 as pb

IMAGE_FORMATS = ("png", "jpeg")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""Episode and robot ids: they become object keys and file names, so a safe, bounded alphabet."""
MAX_IMAGE_SIDE = 4096
"""Largest image height or width accepted (the header is checked before decoding)."""
MAX_STEPS = 10_000
"""Largest number of steps accepted in one episode."""

_DTYPES: dict[int, np.dtype] = {
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
    pb.DTYPE_FLOAT64: np.dtype("<f8"),
    pb.DTYPE_FLOAT16: np.dtype("<f2"),
    pb.DTYPE_UINT8: np.dtype("u1"),
    pb.DTYPE_INT8: np.dtype("i1"),
    pb.DTYPE_INT32: np.dtype("<i4"),
    pb.DTYPE_INT64: np.dtype("<i8"),
    pb.DTYPE_BOOL: np.dtype("?"),
}
_PROTO_DTYPE = {dt.newbyteorder("=").str if dt.itemsize > 1 else dt.str: k for k, dt in _DTYPES.items()}
_ENCODINGS = {"png": pb.IMAGE_ENCODING_PNG, "jpeg": pb.IMAGE_ENCODING_JPEG}
_EXTENSIONS = {"png": ".png", "jpeg": ".jpg"}


class EpisodeDecodeError(ValueError):
    """An episode (or a part of it) failed validation.

    ``reason`` is one of: "malformed", "invalid_id", "unknown_task", "image", "action", "state",
    "too_large" -- low-cardinality, for a metric label.
    """

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


# -- tensors -----------------------------------------------------------------------------------
def dtype_name(dtype: int) -> str:
    return pb.DType.Name(dtype) if dtype in pb.DType.values() else f"<unknown dtype {dtype}>"


def tensor_to_proto(array: np.ndarray) -> pb.Tensor:
    """A numpy array as raw little-endian bytes, C order, with dtype and shape."""
    a = np.asarray(array)
    key = a.dtype.newbyteorder("=").str if a.dtype.itemsize > 1 else a.dtype.str
    if key not in _PROTO_DTYPE:
        raise ValueError(f"dtype {a.dtype} has no mtopt.v1.DType; use one of float32/64/16, (u)int8, int32/64, bool")
    le = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    return pb.Tensor(dtype=_PROTO_DTYPE[key], shape=list(a.shape), data=le.tobytes())


def tensor_from_proto(
    msg: pb.Tensor, *, name: str = "tensor", dtype: np.dtype | str | None = None, shape: tuple[int, ...] | None = None,
    reason: str = "malformed",
) -> np.ndarray:
    """The array a `Tensor` holds, in native byte order; checks dtype, shape and byte length.

    ``dtype``/``shape`` (optional) are what the caller requires; a mismatch raises
    EpisodeDecodeError naming ``name``.
    """
    if msg.dtype not in _DTYPES:
        raise EpisodeDecodeError(f"{name}: dtype {dtype_name(msg.dtype)} is not a valid tensor dtype", reason)
    dt = _DTYPES[msg.dtype]
    if dtype is not None and dt.newbyteorder("=") != np.dtype(dtype).newbyteorder("="):
        raise EpisodeDecodeError(f"{name} must be {np.dtype(dtype).name}, got {dt.name}", reason)
    dims = tuple(int(d) for d in msg.shape)
    if any(d < 0 for d in dims):
        raise EpisodeDecodeError(f"{name}: negative dimension in shape {dims}", reason)
    if shape is not None and dims != tuple(shape):
        raise EpisodeDecodeError(f"{name} must have shape {tuple(shape)}, got {dims}", reason)
    expected = math.prod(dims) * dt.itemsize
    if len(msg.data) != expected:
        raise EpisodeDecodeError(
            f"{name}: shape {dims} of {dt.name} needs {expected} bytes, got {len(msg.data)}", reason
        )
    return np.frombuffer(msg.data, dtype=dt).reshape(dims).astype(dt.newbyteorder("="), copy=False)


# -- images ------------------------------------------------------------------------------------
def encode_image(image: np.ndarray, image_format: str = "png", *, jpeg_quality: int = 95, png_compression: int = 1) -> pb.Image:
    """Encodes an (H, W, 3) or (H, W) uint8 array with OpenCV (channel order kept as is)."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3)):
        raise ValueError(f"images must be uint8 (H, W, 3) or (H, W), got {img.dtype} {img.shape}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if image_format == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, int(png_compression)]
    ok, buf = cv2.imencode(_EXTENSIONS[image_format], img, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {img.shape} image as {image_format}")
    channels = 1 if img.ndim == 2 else img.shape[2]
    return pb.Image(data=buf.tobytes(), encoding=_ENCODINGS[image_format], height=img.shape[0], width=img.shape[1], channels=channels)


def decode_image(msg: pb.Image, *, name: str = "image", expected_shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """Decodes an `Image` to (H, W, C) uint8 and checks it against its declared and expected size.

    The header is checked before decoding (declared size, at most MAX_IMAGE_SIDE, 8 bits), the
    decoded array after (shape and dtype). ``expected_shape`` is (H, W, C) if the caller
    requires one.
    """
    data, fmt = _checked_header(msg, name)
    img = _decode(data, fmt, name)
    _check_shape(img.shape, msg, name, expected_shape)
    return img


def check_image(msg: pb.Image, *, name: str = "image", expected_shape: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
    """The checks of `decode_image` without keeping the pixels: the (H, W, C) the image decodes to.

    A PNG's structure is checked instead of decoding it (`mtopt.image_bytes`: chunk CRCs, the
    inflated data's length, every row's filter), which finds what decoding would; other
    images are decoded."""
    data, fmt = _checked_header(msg, name)
    shape = None
    if fmt == "png":
        try:
            shape = png_shape(data)
        except ValueError as e:
            raise EpisodeDecodeError(f"{name}: {e}", "image") from None
    if shape is None:
        shape = _decode(data, fmt, name).shape
    _check_shape(shape, msg, name, expected_shape)
    return shape


def _checked_header(msg: pb.Image, name: str) -> tuple[bytes, str]:
    if msg.encoding not in (pb.IMAGE_ENCODING_PNG, pb.IMAGE_ENCODING_JPEG):
        raise EpisodeDecodeError(f"{name}: encoding must be PNG or JPEG, got {pb.ImageEncoding.Name(msg.encoding) if msg.encoding in pb.ImageEncoding.values() else msg.encoding}", "image")
    data = bytes(msg.data)
    try:
        fmt, height, width, depth = image_header(data)
    except ValueError as e:
        raise EpisodeDecodeError(f"{name}: {e}", "image") from None
    if _ENCODINGS[fmt] != msg.encoding:
        raise EpisodeDecodeError(f"{name}: declared {pb.ImageEncoding.Name(msg.encoding)} but the data is {fmt.upper()}", "image")
    if (height, width) != (msg.height, msg.width):
        raise EpisodeDecodeError(f"{name}: declared {msg.height}x{msg.width} but the file is {height}x{width}", "image")
    if not (0 < height <= MAX_IMAGE_SIDE and 0 < width <= MAX_IMAGE_SIDE):
        raise EpisodeDecodeError(f"{name}: {height}x{width} exceeds the maximum side {MAX_IMAGE_SIDE}", "image")
    if depth != 8:
        raise EpisodeDecodeError(f"{name}: images must be 8-bit (uint8), got {depth} bits per sample", "image")
    return data, fmt


def _decode(data: bytes, fmt: str, name: str) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise EpisodeDecodeError(f"{name}: OpenCV could not decode the {fmt.upper()} data (corrupt or truncated)", "image")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.dtype != np.uint8:
        raise EpisodeDecodeError(f"{name}: decoded dtype is {img.dtype}, must be uint8", "image")
    return img


def _check_shape(shape: tuple[int, ...], msg: pb.Image, name: str, expected_shape: tuple[int, int, int] | None) -> None:
    if shape[2] != msg.channels:
        raise EpisodeDecodeError(f"{name}: declared {msg.channels} channels, the file has {shape[2]}", "image")
    if expected_shape is not None and tuple(shape) != tuple(expected_shape):
        raise EpisodeDecodeError(f"{name}: shape must be {tuple(expected_shape)}, got {tuple(shape)}", "image")


# -- episodes ----------------------------------------------------------------------------------
def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(round(seconds * 1e9)))
    return ts


def _seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos * 1e-9


def episode_to_proto(
    episode: Episode,
    *,
    image_format: str = "png",
    jpeg_quality: int = 95,
    png_compression: int = 1,
    policy_name: str = "",
    ground_truth_success: Mapping[str, bool] | None = None,
    terminated_by_policy: bool | None = None,
) -> pb.Episode:
    """The wire form of an episode. Validates it first (ValueError on a malformed episode).

    ``terminated_by_policy`` defaults to whether the last action is TERMINATE.
    """
    episode.validate()
    def enc(img):
        return encode_image(img, image_format, jpeg_quality=jpeg_quality, png_compression=png_compression)
    steps = [
        pb.Step(image=enc(episode.images[t]), state_features=tensor_to_proto(episode.states[t].astype(np.float32)),
                action=tensor_to_proto(episode.actions[t].astype(np.float32)))
        for t in range(episode.num_steps)
    ]
    if terminated_by_policy is None:
        terminated_by_policy = bool(episode.actions[-1, ACTION_TERMINATE] > 0)
    msg = pb.Episode(
        episode_id=episode.episode_id,
        robot_id=episode.robot_id,
        task=episode.task,
        policy_version=int(episode.policy_version),
        steps=steps,
        final_image=enc(episode.images[-1]),
        final_state_features=tensor_to_proto(episode.states[-1].astype(np.float32)),
        metadata={str(k): str(v) for k, v in episode.metadata.items()},
        terminated_by_policy=terminated_by_policy,
        policy_name=policy_name,
        ground_truth_success=dict(ground_truth_success or {}),
    )
    if episode.start_time:
        msg.start_time.CopyFrom(_timestamp(episode.start_time))
    if episode.end_time:
        msg.end_time.CopyFrom(_timestamp(episode.end_time))
    return msg


def parse_episode(data: bytes) -> pb.Episode:
    """Parses serialized bytes; EpisodeDecodeError("malformed") when they are not an Episode."""
    msg = pb.Episode()
    try:
        msg.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise EpisodeDecodeError(f"episode bytes do not parse as mtopt.v1.Episode: {e}", "malformed") from None
    return msg


def validate_ids(msg: pb.Episode) -> None:
    """Checks episode_id and robot_id (they become object keys and file names)."""
    for field in ("episode_id", "robot_id"):
        value = getattr(msg, field)
        if not ID_PATTERN.match(value):
            raise EpisodeDecodeError(
                f"{field} {value!r} is invalid: use 1-128 characters from [A-Za-z0-9._-], starting with a letter or digit",
                "invalid_id",
            )


def episode_from_proto(
    msg: pb.Episode,
    *,
    catalogue: TaskCatalogue | None = None,
    image_shape: tuple[int, int, int] | None = None,
    max_steps: int = MAX_STEPS,
) -> Episode:
    """A validated `Episode` from its wire form; EpisodeDecodeError says what is wrong.

    Checks: ids, task (against ``catalogue`` when given), step count, every image (header,
    decoded shape and dtype, all the same (H, W, 3) and equal to ``image_shape`` when given),
    float32 state features of shape (STATE_DIM,) that are finite, float32 actions of shape
    (ACTION_DIM,) that are finite and within [-1, 1].
    """
    images, states, actions = _checked_steps(msg, catalogue, image_shape, max_steps, decode_image)
    episode = Episode(
        episode_id=msg.episode_id,
        robot_id=msg.robot_id,
        task=msg.task,
        images=np.stack(images),
        states=np.stack(states).astype(np.float32),
        actions=np.stack(actions).astype(np.float32),
        policy_version=int(msg.policy_version),
        start_time=_seconds(msg.start_time) if msg.HasField("start_time") else 0.0,
        end_time=_seconds(msg.end_time) if msg.HasField("end_time") else 0.0,
        metadata=dict(msg.metadata),
    )
    try:
        episode.validate()
    except ValueError as e:  # belt and braces: the checks above should have caught it
        raise EpisodeDecodeError(str(e), "malformed") from None
    return episode


def validate_episode(
    msg: pb.Episode,
    *,
    catalogue: TaskCatalogue | None = None,
    image_shape: tuple[int, int, int] | None = None,
    max_steps: int = MAX_STEPS,
) -> int:
    """The checks of `episode_from_proto` without building the Episode (images are checked
    with `check_image`, not kept): the number of steps, or EpisodeDecodeError."""
    _, _, actions = _checked_steps(msg, catalogue, image_shape, max_steps, check_image)
    return len(actions)


def _checked_steps(msg: pb.Episode, catalogue, image_shape, max_steps: int, image_fn):
    """(images, states, actions) of a checked episode; ``image_fn``: decode_image or check_image."""
    validate_ids(msg)
    if not msg.task:
        raise EpisodeDecodeError("task is empty: set Episode.task to the collecting task's name", "unknown_task")
    if catalogue is not None and msg.task not in catalogue:
        raise EpisodeDecodeError(f"unknown task {msg.task!r}; known tasks: {', '.join(catalogue.names)}", "unknown_task")
    n = len(msg.steps)
    if n < 1:
        raise EpisodeDecodeError("an episode needs at least one step", "malformed")
    if n > max_steps:
        raise EpisodeDecodeError(f"episode has {n} steps, more than the maximum {max_steps}", "too_large")
    if not msg.HasField("final_image") or not msg.HasField("final_state_features"):
        raise EpisodeDecodeError("final_image and final_state_features are required", "malformed")

    shape = tuple(image_shape) if image_shape is not None else None
    images, states, actions = [], [], []
    for t, step in enumerate(list(msg.steps) + [None]):
        where = f"steps[{t}]" if step is not None else "final"
        image_msg = step.image if step is not None else msg.final_image
        img = image_fn(image_msg, name=f"{where}.image", expected_shape=shape)
        img_shape = img if isinstance(img, tuple) else img.shape
        if img_shape[2] != 3:
            raise EpisodeDecodeError(f"{where}.image must have 3 channels, got {img_shape[2]}", "image")
        if shape is None:
            shape = img_shape
        images.append(img)
        state_msg = step.state_features if step is not None else msg.final_state_features
        state = tensor_from_proto(state_msg, name=f"{where}.state_features", dtype=np.float32, shape=(STATE_DIM,), reason="state")
        if not np.all(np.isfinite(state)):
            raise EpisodeDecodeError(f"{where}.state_features contains NaN or infinity: {state.tolist()}", "state")
        states.append(state)
        if step is not None:
            action = tensor_from_proto(step.action, name=f"{where}.action", dtype=np.float32, shape=(ACTION_DIM,), reason="action")
            if not np.all(np.isfinite(action)):
                raise EpisodeDecodeError(f"{where}.action contains NaN or infinity: {action.tolist()}", "action")
            if np.any(np.abs(action) > 1.0 + 1e-6):
                raise EpisodeDecodeError(f"{where}.action components must lie in [-1, 1], got {action.tolist()}", "action")
            actions.append(action)
    return images, states, actions


def encode_episode(episode: Episode, **kwargs) -> bytes:
    """``episode_to_proto(episode, **kwargs).SerializeToString()``."""
    return episode_to_proto(episode, **kwargs).SerializeToString()


def decode_episode(data: bytes, **kwargs) -> Episode:
    """``episode_from_proto(parse_episode(data), **kwargs)``."""
    return episode_from_proto(parse_episode(data), **kwargs)
