"""``python -m mtopt_agent``: runs one robot agent with settings from the environment.

SIGTERM or SIGINT: the episode in progress is finished and spooled, collection stops, pending
uploads get MTOPT_AGENT_DRAIN_S seconds, and what is still pending stays in the spool for the
next start. A second SIGINT exits at once (the spool is still consistent: writes are atomic).
Exit status: 0 after a clean stop, 2 on a configuration error.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from mtopt.serving.config import ConfigError, describe

from mtopt_agent.config import PREFIX, AgentConfig, load_config


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help", "--help-config"):
        print("mtopt robot agent: settings from environment variables\n")
        print(describe(AgentConfig, PREFIX))
        print("\nMTOPT_TASKS: task catalogue YAML (default: built-in)")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config()
    except ConfigError as e:
        print(f"mtopt_agent: configuration error: {e}", file=sys.stderr)
        return 2
    from mtopt_agent.runtime import AgentRuntime
    from mtopt_agent.spool import SpoolError

    try:
        runtime = AgentRuntime(config)
    except (SpoolError, ValueError, TypeError, FileNotFoundError) as e:
        print(f"mtopt_agent: cannot start: {e}", file=sys.stderr)
        return 2
    log = logging.getLogger("mtopt_agent")

    def on_signal(signum, frame):
        log.info("received %s: finishing the current episode, then stopping", signal.Signals(signum).name)
        runtime.request_stop()
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C exits at once

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    runtime.start()
    try:
        done = runtime.run()
    finally:
        empty = runtime.close()
    log.info("robot %s stopped after %d episodes; spool %s", config.robot_id, done,
             "empty" if empty else f"keeps {runtime.spool.depth} episodes for the next start")
    return 0


if __name__ == "__main__":
    sys.exit(main())
