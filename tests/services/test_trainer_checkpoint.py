"""trainer checkpoints: periodic and on stop, stored atomically (object, then pointer) on the local
and MinIO backends; a restart resumes the step, the optimiser and Qt1, and versions continue."""

from __future__ import annotations

import time

import grpc
import torch

from registry_harness import code_of, wait_until
from trainer_harness import TrainerHarness, make_trainer, target_batch  # noqa: F401 - fixture
from mtopt.trainer.checkpoints import POINTER
from mtopt.v1 import trainer_pb2


def feed_until(t: TrainerHarness, step: int, timeout: float = 60.0, first: int = 0) -> int:
    seq, deadline = first, time.monotonic() + timeout
    while t.trainer.step < step:
        assert time.monotonic() < deadline, f"trainer stuck at step {t.trainer.step}"
        ack = t.push(target_batch(f"feed/{seq}", 16, seed=seq))
        if ack.accepted:
            seq += 1
        else:
            time.sleep(ack.retry_after_ms / 1000)
    return seq


def test_restart_resumes_from_checkpoint(make_trainer):
    t = make_trainer()
    seq = feed_until(t, 12)
    wait_until(lambda: t.metric("mtopt_trainer_checkpoint_step") >= 10, what="periodic checkpoint")
    assert t.trainer.checkpoints.objects.get(POINTER) is not None
    t.trainer.pause()
    step = t.trainer.step
    qt1 = {k: v.clone() for k, v in t.trainer.targets.q_t1.state_dict().items()}
    opt_steps = t.trainer.learner.optimizer.state_dict()["state"][0]["step"].item()
    last_version = t.trainer.last_published.version
    t.stop()  # SIGTERM path: final checkpoint at the current step
    t.start()
    assert t.trainer.step == step and t.trainer.last_checkpoint_step == step
    assert all(torch.equal(qt1[k], v) for k, v in t.trainer.targets.q_t1.state_dict().items())
    assert t.trainer.learner.optimizer.state_dict()["state"][0]["step"].item() == opt_steps
    assert t.trainer.last_published.version == last_version  # no new initial version
    status = t.stub.GetStatus(trainer_pb2.GetTrainerStatusRequest(), timeout=5)
    assert status.step == step and status.last_checkpoint_step == step and status.last_published_version == last_version
    feed_until(t, step + 5, first=seq)
    wait_until(lambda: t.trainer.last_published.version > last_version, what="a publish after the restart")
    v = t.registry.client.get_version("q_function", last_version + 1)
    assert v.step > step and v.parent_version == last_version


def test_checkpoint_rpc_publishes_with_aliases(make_trainer):
    t = make_trainer()
    reply = t.stub.Checkpoint(trainer_pb2.CheckpointRequest(publish=True, aliases=["stable"], reason="manual"), timeout=30)
    assert reply.step == 0 and reply.checkpoint_uri.endswith("slot-0.pt")
    assert reply.published_version.version == 2 and "stable" in reply.published_version.aliases
    assert reply.published_version.labels["reason"] == "manual"
    again = t.stub.Checkpoint(trainer_pb2.CheckpointRequest(), timeout=30)
    assert again.checkpoint_uri.endswith("slot-1.pt") and not again.HasField("published_version")
    assert code_of(lambda: t.stub.Checkpoint(trainer_pb2.CheckpointRequest(aliases=["stable"]), timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
