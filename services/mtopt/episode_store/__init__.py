"""episode_store: durable storage of robot episodes (upload, get, list, watch) over gRPC.

Modules: `config` (MTOPT_EPISODE_STORE_* settings), `layout` (object layout and records),
`backend` (the `EpisodeBackend` interface), `commit` (group commit into segments over object
primitives), `log_reader` (reading the commit log, the id index), `storage` (`LocalDirBackend`, `MinioBackend`), `s3put`
(the lean S3 PUT of the upload path), `watch` (the shared commit-log tail behind
WatchEpisodes), `servicer` (protobuf <-> records), `server` (``serve(config)``). Run it with
``python -m mtopt.episode_store``.
"""

from mtopt.episode_store.config import EpisodeStoreConfig, load_config
from mtopt.episode_store.server import EpisodeStore, serve, start_episode_store

__all__ = ["EpisodeStore", "EpisodeStoreConfig", "load_config", "serve", "start_episode_store"]
