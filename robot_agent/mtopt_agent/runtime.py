"""Wires one robot agent from an `AgentConfig`: robot, spool, uploader, parameter source, metrics.

This is the single place that builds the topology of a robot (Acme's builder role); the process
entry point (`__main__`), `mtopt up` and the tests all use it and may pass in their own robot,
catalogue, parameter source or metrics registry.

Usage::

    runtime = AgentRuntime(load_config())
    runtime.start()                     # metrics server, uploader thread, registry follower
    runtime.run(stop_event)             # collect in this thread until stop (or max_episodes)
    runtime.close()                     # drain uploads for drain_s, stop everything
"""

from __future__ import annotations

import importlib
import logging
import threading

from prometheus_client import CollectorRegistry

from mtopt.robot import Robot, canonical_action, validate_action
from mtopt.serving.client import RetryPolicy, make_channel
from mtopt.serving.metrics import MetricsServer
from mtopt.sim.tabletop import TabletopSim
from mtopt.tasks import TaskCatalogue
from mtopt.v1 import episode_store_pb2_grpc, model_registry_pb2_grpc

from mtopt_agent.agent import BootstrapPolicy, CollectSettings, RobotAgent
from mtopt_agent.config import AgentConfig
from mtopt_agent.metrics import AgentMetrics
from mtopt_agent.spool import EpisodeSpool
from mtopt_agent.uploader import Uploader
from mtopt_agent.weights import ParameterSource, RegistryParameterSource, StaticParameterSource, onnx_policy_factory

log = logging.getLogger(__name__)


def make_robot(config: AgentConfig) -> Robot:
    """The robot the config names: the simulator, or ``package.module:factory(config)``."""
    if config.robot == "sim":
        return TabletopSim(seed=config.seed)
    module_name, _, attr = config.robot.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"MTOPT_AGENT_ROBOT={config.robot!r}: cannot import {attr} from {module_name}: {e}") from e
    robot = factory(config)
    if not isinstance(robot, Robot):
        raise TypeError(f"MTOPT_AGENT_ROBOT={config.robot!r} returned {type(robot).__name__}, not a mtopt.robot.Robot")
    return robot


def _channel_options(config: AgentConfig) -> list[tuple[str, int]]:
    # Reconnect quickly after an outage: the default gRPC reconnect backoff grows to 120 s.
    return [
        ("grpc.initial_reconnect_backoff_ms", int(config.upload_initial_backoff_s * 1000)),
        ("grpc.min_reconnect_backoff_ms", int(config.upload_initial_backoff_s * 1000)),
        ("grpc.max_reconnect_backoff_ms", int(config.upload_max_backoff_s * 1000)),
    ]


class AgentRuntime:
    """One running robot agent; see the module docstring."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        robot: Robot | None = None,
        catalogue: TaskCatalogue | None = None,
        parameter_source: ParameterSource | None = None,
        bootstrap_policy: BootstrapPolicy | None = None,
        registry: CollectorRegistry | None = None,
    ):
        self.config = config
        self.catalogue = catalogue if catalogue is not None else TaskCatalogue.load(config.tasks)
        unknown = [n for n in config.task_names if n not in self.catalogue]
        if unknown:
            raise ValueError(f"MTOPT_AGENT_TASK_NAMES names unknown tasks {unknown}; known: {', '.join(self.catalogue.names)}")
        self.metrics = AgentMetrics(registry, robot_id=config.robot_id)
        self.spool = EpisodeSpool(config.spool_dir, config.spool_max_bytes, fsync=config.spool_fsync)
        self.metrics.bind_spool(lambda: self.spool.depth, lambda: self.spool.nbytes, lambda: self.spool.rejected_count)
        self.robot = robot if robot is not None else make_robot(config)
        backoff = RetryPolicy(initial_backoff_s=config.upload_initial_backoff_s, max_backoff_s=config.upload_max_backoff_s)
        self._channels = []
        store_channel = make_channel(config.store_address, default_timeout_s=config.upload_timeout_s,
                                     options=_channel_options(config))
        self._channels.append(store_channel)
        self.uploader = Uploader(
            self.spool, episode_store_pb2_grpc.EpisodeStoreStub(store_channel), self.metrics,
            chunk_bytes=config.upload_chunk_bytes, timeout_s=config.upload_timeout_s, backoff=backoff,
            max_attempts=config.upload_max_attempts, seed=config.seed,
        )
        self.parameter_source = parameter_source if parameter_source is not None else self._parameter_source(backoff)
        settings = CollectSettings(
            epsilon=config.epsilon, scripted_fraction=config.scripted_fraction,
            sequence_probability=config.sequence_probability, sequence_skills=config.sequence_skills,
            max_steps=config.max_steps, image_encoding=config.image_encoding, jpeg_quality=config.jpeg_quality,
            episode_period_s=config.episode_period_s,
        )
        self.agent = RobotAgent(
            self.robot, self.catalogue, self.spool, robot_id=config.robot_id, settings=settings,
            parameter_source=self.parameter_source, bootstrap_policy=bootstrap_policy, task_names=config.task_names,
            metrics=self.metrics, seed=None if config.seed is None else config.seed + 1,
        )
        self.metrics_server = (MetricsServer(self.metrics.registry, config.metrics_port, config.metrics_host)
                               if config.metrics_enabled else None)
        self._stop = threading.Event()
        self._closed = False

    def _parameter_source(self, backoff: RetryPolicy) -> ParameterSource | None:
        c = self.config
        cem = dict(iterations=c.cem_iterations, samples=c.cem_samples, elites=c.cem_elites)
        if c.registry_address:
            probe_obs = self.robot.observe()
            probe_task = self.catalogue.tasks[0].index

            def probe(policy) -> None:
                validate_action(canonical_action(policy(probe_obs, probe_task)))

            channel = make_channel(c.registry_address, default_timeout_s=c.rpc_timeout_s, options=_channel_options(c))
            self._channels.append(channel)
            return RegistryParameterSource(
                model_registry_pb2_grpc.ModelRegistryStub(channel), robot_id=c.robot_id, model=c.model,
                alias=c.model_alias, mode=c.weights_mode, poll_interval_s=c.poll_interval_s,
                rpc_timeout_s=c.rpc_timeout_s, download_timeout_s=c.download_timeout_s,
                policy_factory=onnx_policy_factory(seed=c.seed, **cem), catalogue=self.catalogue, probe=probe,
                metrics=self.metrics, backoff=backoff, min_model_step=c.min_model_step,
            )
        if c.model_dir is not None:
            version_file = c.model_dir / "version"
            version = int(version_file.read_text().strip()) if version_file.is_file() else 0
            return StaticParameterSource.from_directory(c.model_dir, version=version, seed=c.seed or 0, **cem)
        return None

    @property
    def stop_event(self) -> threading.Event:
        """Set it (e.g. from a signal handler) to end collection after the current episode."""
        return self._stop

    def start(self) -> None:
        """Starts the metrics server, the uploader and the parameter source."""
        if self.metrics_server is not None:
            self.metrics_server.start()
            log.info("robot agent %s: metrics on port %d", self.config.robot_id, self.metrics_server.port)
        self.uploader.start()
        if self.parameter_source is not None:
            self.parameter_source.start()

    def request_stop(self) -> None:
        """Ends collection after the episode in progress (safe from signal handlers and threads)."""
        self._stop.set()
        self.spool.wake()

    def run(self, max_episodes: int | None = None) -> int:
        """Collects in the calling thread until `request_stop` or ``max_episodes`` (default: the
        config's). Returns the episodes spooled."""
        limit = self.config.max_episodes if max_episodes is None else max_episodes
        return self.agent.run(self._stop, limit)

    def close(self, drain_s: float | None = None) -> bool:
        """Uploads pending episodes for up to ``drain_s`` (default: the config's), then stops
        everything. Returns whether the spool was emptied. Idempotent."""
        if self._closed:
            return self.spool.depth == 0
        self._closed = True
        self.request_stop()
        empty = self.uploader.stop(self.config.drain_s if drain_s is None else drain_s)
        if self.parameter_source is not None:
            self.parameter_source.close()
        for channel in self._channels:
            channel.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self.robot.close()
        self.spool.close()
        return empty

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()
