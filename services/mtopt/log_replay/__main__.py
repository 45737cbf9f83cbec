"""``python -m mtopt.log_replay``: runs log_replay with settings from the environment."""

from __future__ import annotations

import sys

from mtopt.log_replay.config import PREFIX, LogReplayConfig, load_config
from mtopt.serving.cli import config_main
from mtopt.serving.s3 import CREDENTIALS_HELP


def _serve():
    from mtopt.log_replay.server import serve

    return serve


def main(argv: list[str] | None = None) -> int:
    return config_main(
        "log_replay", LogReplayConfig, PREFIX, load_config, _serve, argv,
        extra_help=(CREDENTIALS_HELP, "MTOPT_TASKS: task catalogue YAML (default: built-in)"),
    )


if __name__ == "__main__":
    sys.exit(main())
