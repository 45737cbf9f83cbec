"""SD versions as runnable `SuccessDetector`s: serialization for the registry and an LRU of loaded ones.

A version's weights live in the model registry (model ``success_detector``, artifact ``sd.pt``
= the `SuccessDetectorNet` state_dict, ``labels["network"]`` = JSON of the net's constructor
kwargs, ``labels["sd_version"]`` = the SD version number). `ModelCache` keeps the few most
recently used versions loaded so log_replay can relabel with an old version while the serving
one keeps answering.

Usage (inside the event loop)::

    cache = ModelCache(fetch, run_blocking, capacity=4, device="cpu")
    sd, network = await cache.get(record)     # loads on a miss (concurrent misses share one load)
"""

from __future__ import annotations

import asyncio
import collections
import io
import json
from typing import Awaitable, Callable

import torch

from mtopt.core.config import DEFAULT_TOWER_STEM
from mtopt.core.success_detector import SuccessDetector
from mtopt.success_detector.errors import Precondition
from mtopt.success_detector.storage import VersionRecord

MODEL = "success_detector"
ARTIFACT = "sd.pt"
SERVING_ALIAS = "serving"


def network_kwargs(num_task_slots: int, image_size: int, channels: int, stem: str = DEFAULT_TOWER_STEM) -> dict:
    """The SD net's constructor arguments as stored in labels["network"] (`stem` only when not the default,
    so versions published before the option existed read the same)."""
    network = {"num_task_slots": int(num_task_slots), "image_size": int(image_size), "channels": int(channels)}
    if stem != DEFAULT_TOWER_STEM:
        network["stem"] = str(stem)
    return network


def weights_bytes(sd: SuccessDetector) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in sd.net.state_dict().items()}, buf)
    return buf.getvalue()


def build_detector(network: dict, weights: bytes | None, device: str) -> SuccessDetector:
    """A `SuccessDetector` with the given net kwargs and ``sd.pt`` weights (never unpickles objects);
    without weights, freshly initialised for training."""
    sd = SuccessDetector(int(network["num_task_slots"]), int(network["image_size"]), int(network["channels"]), device=device,
                         stem=network.get("stem", DEFAULT_TOWER_STEM))
    if weights is not None:
        state = torch.load(io.BytesIO(weights), map_location=device, weights_only=True)
        sd.net.load_state_dict(state)
        sd.net.eval()
    return sd


Fetch = Callable[[int], Awaitable[tuple[dict, bytes]]]
"""registry version -> (labels["network"] as a dict, sd.pt bytes)."""


class ModelCache:
    """The ``capacity`` most recently used SD versions, loaded (LRU)."""

    def __init__(self, fetch: Fetch, run_blocking: Callable, capacity: int, device: str):
        self._fetch, self._run, self.capacity, self.device = fetch, run_blocking, capacity, device
        self._loaded: collections.OrderedDict[int, tuple[SuccessDetector, dict]] = collections.OrderedDict()
        self._loading: dict[int, asyncio.Future] = {}

    def __len__(self) -> int:
        return len(self._loaded)

    def loaded_versions(self) -> list[int]:
        return list(self._loaded)

    def put(self, version: int, sd: SuccessDetector, network: dict) -> None:
        self._loaded[version] = (sd, network)
        self._loaded.move_to_end(version)
        while len(self._loaded) > self.capacity:
            self._loaded.popitem(last=False)

    async def get(self, record: VersionRecord) -> tuple[SuccessDetector, dict]:
        if record.version in self._loaded:
            self._loaded.move_to_end(record.version)
            return self._loaded[record.version]
        pending = self._loading.get(record.version)
        if pending is None:
            pending = asyncio.ensure_future(self._load(record))
            self._loading[record.version] = pending
            pending.add_done_callback(lambda _f, v=record.version: self._loading.pop(v, None))
        return await asyncio.shield(pending)

    async def _load(self, record: VersionRecord) -> tuple[SuccessDetector, dict]:
        network, weights = await self._fetch(record.registry_version)
        try:
            sd = await self._run(build_detector, network, weights, self.device)
        except Exception as e:  # weights that do not fit the declared network: retrying will not help
            raise Precondition(f"the weights of SD version {record.version} (registry version {record.registry_version}) "
                               f"cannot be loaded: {type(e).__name__}: {e}", "version_not_ready") from None
        self.put(record.version, sd, network)
        return sd, network


def parse_network(labels) -> dict:
    """labels["network"] of a registry version as a dict (ValueError if missing or malformed)."""
    raw = labels.get("network", "")
    try:
        network = json.loads(raw)
        return network_kwargs(network["num_task_slots"], network["image_size"], network["channels"], network.get("stem", DEFAULT_TOWER_STEM))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"registry version has no valid labels['network'] ({raw!r}): {e}") from None
