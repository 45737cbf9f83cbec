"""trainer: fits the multi-task Q-function on Bellman targets and publishes it every K steps.

Modules: `config` (MTOPT_TRAINER_* settings), `buffer` (the bounded train buffer with
back-pressure and de-duplication), `checkpoints` (atomic checkpoints in the object store),
`core` (`Trainer`: restore, the SGD loop thread, publishing), `servicer` (protobuf <-> rows),
`server` (``serve(config)``, ``start_trainer``). Run it with ``python -m mtopt.trainer``.
"""

from mtopt.trainer.config import TrainerConfig, load_config
from mtopt.trainer.server import TrainerServer, serve, start_trainer

__all__ = ["TrainerConfig", "TrainerServer", "load_config", "serve", "start_trainer"]
