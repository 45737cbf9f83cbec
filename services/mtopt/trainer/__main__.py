"""``python -m mtopt.trainer``: runs the trainer with settings from the environment."""

from __future__ import annotations

import sys

from mtopt.serving.cli import config_main
from mtopt.serving.s3 import CREDENTIALS_HELP
from mtopt.trainer.config import PREFIX, TrainerConfig, load_config


def _serve():
    from mtopt.trainer.server import serve

    return serve


def main(argv: list[str] | None = None) -> int:
    return config_main(
        "trainer", TrainerConfig, PREFIX, load_config, _serve, argv,
        extra_help=(CREDENTIALS_HELP, "MTOPT_TASKS: task catalogue YAML (default: built-in)"),
    )


if __name__ == "__main__":
    sys.exit(main())
