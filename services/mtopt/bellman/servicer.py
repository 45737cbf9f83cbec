"""The Bellman gRPC servicer: the worker's status (its work is done by outgoing calls)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from mtopt.bellman.worker import BellmanWorker
from mtopt.v1 import bellman_pb2 as pb, bellman_pb2_grpc


def _ts(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


class BellmanServicer(bellman_pb2_grpc.BellmanServicer):
    def __init__(self, worker: BellmanWorker):
        self.worker = worker

    async def GetStatus(self, request, context):
        w = self.worker
        nets = w.nets.current
        s = pb.BellmanStatus(
            worker_id=w.worker_id, target_model_version=nets.version if nets else 0, lagged_model_version=nets.lagged_version if nets else 0,
            targets_computed=w.targets_computed, batches_pushed=w.batches_pushed, batches_rejected=w.batches_rejected,
            targets_per_second=w.targets_per_second(), started_time=_ts(w.started_time),
        )
        if w.last_push_time is not None:
            s.last_push_time.CopyFrom(_ts(w.last_push_time))
        return s
