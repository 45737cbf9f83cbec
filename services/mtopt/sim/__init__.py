"""The built-in tabletop simulator: the embedded default robot for tests, benchmarks and demos."""

from mtopt.sim.tabletop import TabletopSim, SimConfig
from mtopt.sim.scripted import ScriptedPolicy, RandomPolicy

__all__ = ["TabletopSim", "SimConfig", "ScriptedPolicy", "RandomPolicy"]
