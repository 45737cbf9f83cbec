"""``python -m mtopt.episode_store``: runs the store with settings from the environment."""

from __future__ import annotations

import sys

from mtopt.episode_store.config import PREFIX, EpisodeStoreConfig, load_config
from mtopt.serving.config import ConfigError, describe


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help", "--help-config"):
        print("episode_store: settings from environment variables\n")
        print(describe(EpisodeStoreConfig, PREFIX))
        print("\nMTOPT_S3_ACCESS_KEY / MTOPT_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY): S3 credentials")
        print("MTOPT_TASKS: task catalogue YAML (default: built-in)")
        return 0
    try:
        config = load_config()
    except ConfigError as e:
        print(f"episode_store: configuration error: {e}", file=sys.stderr)
        return 2
    from mtopt.episode_store.server import serve

    serve(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
