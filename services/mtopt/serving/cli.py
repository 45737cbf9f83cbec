"""The ``python -m mtopt.<service>`` entry point shared by the services: ``--help-config``
prints the settings, otherwise the config is loaded from the environment and served."""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

from mtopt.serving.config import ConfigError, describe


def config_main(
    name: str, config_cls: type, prefix: str, load_config: Callable[[], Any], serve: Callable[[], Callable[[Any], None]],
    argv: list[str] | None = None, extra_help: Sequence[str] = (),
) -> int:
    """Exit status of ``python -m mtopt.<name>``: 0 after help or a served run, 2 on a configuration error.

    ``serve()`` returns the service's serve function (so the server module is imported only
    when it is needed); ``extra_help`` lines follow the variable table in the help.
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help", "--help-config"):
        print(f"{name}: settings from environment variables\n")
        print(describe(config_cls, prefix))
        for i, line in enumerate(extra_help):
            print(("\n" if i == 0 else "") + line)
        return 0
    try:
        config = load_config()
    except ConfigError as e:
        print(f"{name}: configuration error: {e}", file=sys.stderr)
        return 2
    serve()(config)
    return 0
