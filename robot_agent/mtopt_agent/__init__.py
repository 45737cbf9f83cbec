"""mtopt_agent: the MT-Opt robot agent, one per robot; runs without torch.

It drives a `mtopt.robot.Robot` (the built-in simulator by default) with the scripted bootstrap
policy or the CEM policy on the ONNX Q-network, records episodes, spools each one durably on
local disk before uploading it to episode_store, and follows the model registry for new weights.

Modules, named after their RL roles:

- `config`: `AgentConfig`, MTOPT_AGENT_* environment variables.
- `agent`: `RobotAgent`, the actor: task choice (with pick-then-place sequencing), policy
  choice, exploration, recording.
- `spool`: `EpisodeSpool`, the durable local queue of finished episodes.
- `uploader`: `Uploader`, spool -> episode_store with retries; refused episodes go to rejected/.
- `weights`: `ParameterSource`s; `RegistryParameterSource` watches or polls model_registry.
- `metrics`: `AgentMetrics` (mtopt_robot_agent_*).
- `runtime`: `AgentRuntime`, wires the pieces from a config.

Run it with ``python -m mtopt_agent`` (``--help-config`` lists the settings).
"""

from mtopt_agent.agent import CollectSettings, EpisodeReport, RobotAgent
from mtopt_agent.config import AgentConfig, load_config
from mtopt_agent.spool import EpisodeSpool, SpoolEntry, SpoolError
from mtopt_agent.uploader import Uploader
from mtopt_agent.weights import LoadedPolicy, ParameterSource, RegistryParameterSource, StaticParameterSource

__all__ = [
    "AgentConfig",
    "CollectSettings",
    "EpisodeReport",
    "EpisodeSpool",
    "LoadedPolicy",
    "ParameterSource",
    "RegistryParameterSource",
    "RobotAgent",
    "SpoolEntry",
    "SpoolError",
    "StaticParameterSource",
    "Uploader",
    "load_config",
]
