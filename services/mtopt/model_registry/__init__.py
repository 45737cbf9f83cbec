"""model_registry: versioned model weights (Q-function, success detector) over gRPC.

Modules: `config` (MTOPT_MODEL_REGISTRY_* settings), `layout` (object layout and records),
`objects` (the `ObjectStore` interface, `LocalDirObjects`, `MinioObjects`), `state` (the fold
of a model's event log and the rules for changing it), `registry` (publishing, lookups and the
event log over an object store), `watch` (the fan-out behind WatchVersions), `servicer`
(protobuf <-> records), `server` (``serve(config)``), `client` (helpers for publishers and
consumers). Run it with ``python -m mtopt.model_registry``.
"""

from mtopt.model_registry.config import ModelRegistryConfig, load_config
from mtopt.model_registry.server import ModelRegistryServer, serve, start_model_registry

__all__ = ["ModelRegistryConfig", "ModelRegistryServer", "load_config", "serve", "start_model_registry"]
