"""log_replay: per-task replay buffers fed from episode_store and labelled by the success
detector, with impersonation, re-balanced sampling for Bellman workers and relabelling.

Modules: `config` (MTOPT_LOG_REPLAY_* settings), `state` (the persisted cursor), `buffer`
(thread-safe buffers over `mtopt.core.replay.ReplayBuffer`), `labeller` (success_detector
calls), `follower` (watch -> label -> buffer -> cursor), `relabel` (relabelling runs and the
serving-version poller), `servicer` (protobuf <-> core), `server` (``serve(config)``). Run it
with ``python -m mtopt.log_replay``.
"""

from mtopt.log_replay.config import LogReplayConfig, load_config
from mtopt.log_replay.server import LogReplay, serve, start_log_replay

__all__ = ["LogReplay", "LogReplayConfig", "load_config", "serve", "start_log_replay"]
