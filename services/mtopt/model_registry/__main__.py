"""``python -m mtopt.model_registry``: runs the registry with settings from the environment."""

from __future__ import annotations

import sys

from mtopt.model_registry.config import PREFIX, ModelRegistryConfig, load_config
from mtopt.serving.cli import config_main
from mtopt.serving.s3 import CREDENTIALS_HELP


def _serve():
    from mtopt.model_registry.server import serve

    return serve


def main(argv: list[str] | None = None) -> int:
    return config_main("model_registry", ModelRegistryConfig, PREFIX, load_config, _serve, argv, extra_help=(CREDENTIALS_HELP,))


if __name__ == "__main__":
    sys.exit(main())
