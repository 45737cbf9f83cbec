"""``python -m mtopt.success_detector``: runs the success detector with settings from the environment."""

from __future__ import annotations

import sys

from mtopt.serving.cli import config_main
from mtopt.serving.s3 import CREDENTIALS_HELP
from mtopt.success_detector.config import PREFIX, SuccessDetectorConfig, load_config


def _serve():
    from mtopt.success_detector.server import serve

    return serve


def main(argv: list[str] | None = None) -> int:
    return config_main(
        "success_detector", SuccessDetectorConfig, PREFIX, load_config, _serve, argv,
        extra_help=(CREDENTIALS_HELP, "MTOPT_TASKS: task catalogue YAML (default: built-in)"),
    )


if __name__ == "__main__":
    sys.exit(main())
