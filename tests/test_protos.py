"""The mtopt.v1 API contract: stubs are fresh, importable, and tensors round-trip."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "services"
if str(SERVICES) not in sys.path:
    sys.path.insert(0, str(SERVICES))

from google.protobuf import timestamp_pb2  # noqa: E402

from mtopt.v1 import common_pb2  # noqa: E402

PROTO_MODULES = sorted(p.stem for p in (ROOT / "protos" / "mtopt" / "v1").glob("*.proto"))
EXPECTED_SERVICES = {
    "episode_store": {"EpisodeStore"},
    "success_detector": {"SuccessDetector"},
    "log_replay": {"LogReplay"},
    "bellman": {"Bellman"},
    "trainer": {"Trainer"},
    "model_registry": {"ModelRegistry"},
    "common": set(),
}


def test_generated_stubs_are_fresh():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_reports_stale_stubs(tmp_path):
    gen = [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)]
    subprocess.run(gen, check=True, capture_output=True, timeout=120)
    (tmp_path / "mtopt" / "v1" / "trainer_pb2.py").write_text("# tampered\n")
    result = subprocess.run([*gen, "--check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "mtopt/v1/trainer_pb2.py (out of date)" in result.stderr


def test_every_proto_has_generated_modules():
    assert set(PROTO_MODULES) == set(EXPECTED_SERVICES)


@pytest.mark.parametrize("name", PROTO_MODULES)
def test_modules_and_service_stubs_import(name):
    pb2 = importlib.import_module(f"mtopt.v1.{name}_pb2")
    pb2_grpc = importlib.import_module(f"mtopt.v1.{name}_pb2_grpc")
    assert pb2.DESCRIPTOR.package == "mtopt.v1"
    services = set(pb2.DESCRIPTOR.services_by_name)
    assert services == EXPECTED_SERVICES[name]
    channel = grpc.insecure_channel("localhost:1")  # never connected
    try:
        for service in services:
            stub = getattr(pb2_grpc, f"{service}Stub")(channel)
            servicer = getattr(pb2_grpc, f"{service}Servicer")
            assert callable(getattr(pb2_grpc, f"add_{service}Servicer_to_server"))
            for method in pb2.DESCRIPTOR.services_by_name[service].methods:
                assert hasattr(stub, method.name)
                assert hasattr(servicer, method.name)
    finally:
        channel.close()


def to_tensor(array: np.ndarray) -> common_pb2.Tensor:
    dtypes = {np.dtype("float32"): common_pb2.DTYPE_FLOAT32, np.dtype("uint8"): common_pb2.DTYPE_UINT8}
    le = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return common_pb2.Tensor(dtype=dtypes[array.dtype], shape=list(array.shape), data=le.tobytes())


def from_tensor(tensor: common_pb2.Tensor) -> np.ndarray:
    dtypes = {common_pb2.DTYPE_FLOAT32: np.dtype("<f4"), common_pb2.DTYPE_UINT8: np.dtype("u1")}
    return np.frombuffer(tensor.data, dtype=dtypes[tensor.dtype]).reshape(tuple(tensor.shape))


def test_episode_round_trip_keeps_tensor_dtype_and_shape():
    rng = np.random.default_rng(0)
    state = rng.standard_normal((2,)).astype(np.float32)
    action = rng.standard_normal((3, 2)).astype(np.float32)
    t0 = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=5)
    episode = common_pb2.Episode(
        episode_id="ep-1",
        robot_id="robot-7",
        task="lift-red",
        policy_version=3,
        steps=[
            common_pb2.Step(
                image=common_pb2.Image(
                    data=b"\x89PNG", encoding=common_pb2.IMAGE_ENCODING_PNG, height=4, width=4, channels=3
                ),
                state_features=to_tensor(state),
                action=to_tensor(action),
                time=t0,
            )
        ],
        final_state_features=to_tensor(state),
        start_time=t0,
        metadata={"seed": "42"},
        terminated_by_policy=True,
    )
    decoded = common_pb2.Episode.FromString(episode.SerializeToString())

    assert decoded == episode
    got = from_tensor(decoded.steps[0].action)
    assert got.dtype == np.float32 and got.shape == (3, 2)
    np.testing.assert_array_equal(got, action)
    # The wire bytes are little-endian whatever the host order.
    assert decoded.steps[0].action.data == action.astype("<f4").tobytes()
    np.testing.assert_array_equal(from_tensor(decoded.final_state_features), state)
    assert decoded.steps[0].time.ToNanoseconds() == t0.ToNanoseconds()
