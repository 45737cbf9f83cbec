"""``python -m mtopt.model_registry``: runs the registry with settings from the environment."""

from __future__ import annotations

import sys

from mtopt.model_registry.config import PREFIX, ModelRegistryConfig, load_config
from mtopt.serving.config import ConfigError, describe


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help", "--help-config"):
        print("model_registry: settings from environment variables\n")
        print(describe(ModelRegistryConfig, PREFIX))
        print("\nMTOPT_S3_ACCESS_KEY / MTOPT_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY): S3 credentials")
        return 0
    try:
        config = load_config()
    except ConfigError as e:
        print(f"model_registry: configuration error: {e}", file=sys.stderr)
        return 2
    from mtopt.model_registry.server import serve

    serve(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
