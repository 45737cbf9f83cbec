"""``python -m mtopt.bellman``: runs a Bellman worker with settings from the environment."""

from __future__ import annotations

import sys

from mtopt.bellman.config import PREFIX, BellmanConfig, load_config
from mtopt.serving.cli import config_main


def _serve():
    from mtopt.bellman.server import serve

    return serve


def main(argv: list[str] | None = None) -> int:
    return config_main("bellman", BellmanConfig, PREFIX, load_config, _serve, argv)


if __name__ == "__main__":
    sys.exit(main())
