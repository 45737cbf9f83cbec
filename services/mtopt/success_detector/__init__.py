"""success_detector: the multi-task visual success detector as a gRPC service.

Modules: `config` (MTOPT_SUCCESS_DETECTOR_* settings), `storage` (object layout: examples,
version records), `examples` (AddExamples validation, idempotent writes, counts), `models`
(weights <-> registry, LRU of loaded versions), `training` (fit, evaluate, publish one version),
`versions` (version records, the training thread, the serving version, Classify), `servicer`
(protobuf <-> domain), `server` (``serve(config)``). Run it with ``python -m mtopt.success_detector``.
"""

from mtopt.success_detector.config import SuccessDetectorConfig, load_config
from mtopt.success_detector.server import SuccessDetectorServer, serve, start_success_detector

__all__ = ["SuccessDetectorConfig", "SuccessDetectorServer", "load_config", "serve", "start_success_detector"]
