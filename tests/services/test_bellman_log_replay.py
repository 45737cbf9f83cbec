"""A Bellman worker on the real chain: episode_store -> log_replay (SD labels from a real
success_detector) -> bellman -> trainer, with the registry holding both models; the worker
reconnects after a log_replay restart."""

from __future__ import annotations

import pytest

from bellman_harness import SIM_IMAGE_SIZE, make_bellman  # noqa: F401 - fixture
from registry_harness import wait_until
from replay_harness import SIM_IMAGE_SHAPE, make_replay, sim_episodes, upload_all  # noqa: F401 - fixture
from sd_harness import make_sd  # noqa: F401 - fixture
from trainer_harness import make_trainer  # noqa: F401 - fixture


@pytest.fixture
def backend_kind() -> str:
    return "local"


def test_worker_samples_from_log_replay_and_pushes_to_trainer(make_store, make_registry, make_sd, make_replay, make_trainer,
                                                              make_bellman):
    registry = make_registry()
    store = make_store(image_shape=SIM_IMAGE_SHAPE, max_episode_bytes=4 << 20)
    sd = make_sd(registry, channels=8, train_steps=5, batch_size=16)
    episodes = sim_episodes(12, seed=3, max_steps=4)
    sd.train_ready_version([e.episode.final_image for e in episodes], ["lift-any"] * 12, [i % 2 == 0 for i in range(12)], steps=5)
    upload_all(store, episodes)
    replay = make_replay(store, sd)
    replay.wait_for(lambda s: s.episodes_processed == 12, what="episodes labelled")
    trainer = make_trainer(registry=registry, image_size=SIM_IMAGE_SIZE, buffer_capacity_rows=256, min_buffer_rows=64,
                           max_batch_rows=64, publish_every_steps=1000)
    b = make_bellman(trainer.address, f"127.0.0.1:{registry.server.port}", log_replay_address=replay.address, batch_size=16)
    wait_until(lambda: b.worker.batches_pushed >= 3, timeout=60, what="batches from log_replay pushed")
    assert trainer.metric("mtopt_trainer_rows_accepted_total") >= 48
    assert b.status().target_model_version == trainer.trainer.last_published.version
    replay.restart(grace_s=0.2)
    pushed = b.worker.batches_pushed
    wait_until(lambda: b.worker.batches_pushed >= pushed + 3, timeout=60, what="batches after the log_replay restart")
    assert trainer.metric("mtopt_trainer_batches_duplicate_total") == 0
