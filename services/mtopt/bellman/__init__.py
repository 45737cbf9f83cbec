"""bellman: workers that turn re-balanced transition batches into clipped double-Q targets.

Modules: `config` (MTOPT_BELLMAN_* settings), `targets` (Qt1/Qt2 from the registry, batch
decoding, the target computation), `worker` (the SampleBatches -> PushTargets loop with
back-pressure and reconnection), `servicer` (GetStatus), `server` (``serve(config)``,
``start_bellman``). Run it with ``python -m mtopt.bellman``; scale it with replicas.
"""

from mtopt.bellman.config import BellmanConfig, load_config
from mtopt.bellman.server import BellmanServer, serve, start_bellman

__all__ = ["BellmanConfig", "BellmanServer", "load_config", "serve", "start_bellman"]
