import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from mtopt.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TargetBatch(_message.Message):
    __slots__ = ("batch_id", "images", "state_features", "actions", "task_indices", "targets", "target_model_version", "lagged_model_version", "worker_id", "sd_version", "created_time")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    STATE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    TASK_INDICES_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAGGED_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SD_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIME_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    images: _common_pb2.Tensor
    state_features: _common_pb2.Tensor
    actions: _common_pb2.Tensor
    task_indices: _common_pb2.Tensor
    targets: _common_pb2.Tensor
    target_model_version: int
    lagged_model_version: int
    worker_id: str
    sd_version: int
    created_time: _timestamp_pb2.Timestamp
    def __init__(self, batch_id: _Optional[str] = ..., images: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., state_features: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., actions: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., task_indices: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., targets: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., target_model_version: _Optional[int] = ..., lagged_model_version: _Optional[int] = ..., worker_id: _Optional[str] = ..., sd_version: _Optional[int] = ..., created_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetBellmanStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BellmanStatus(_message.Message):
    __slots__ = ("worker_id", "target_model_version", "lagged_model_version", "targets_computed", "batches_pushed", "batches_rejected", "targets_per_second", "last_push_time", "started_time")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAGGED_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGETS_COMPUTED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_PUSHED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_REJECTED_FIELD_NUMBER: _ClassVar[int]
    TARGETS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    LAST_PUSH_TIME_FIELD_NUMBER: _ClassVar[int]
    STARTED_TIME_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    target_model_version: int
    lagged_model_version: int
    targets_computed: int
    batches_pushed: int
    batches_rejected: int
    targets_per_second: float
    last_push_time: _timestamp_pb2.Timestamp
    started_time: _timestamp_pb2.Timestamp
    def __init__(self, worker_id: _Optional[str] = ..., target_model_version: _Optional[int] = ..., lagged_model_version: _Optional[int] = ..., targets_computed: _Optional[int] = ..., batches_pushed: _Optional[int] = ..., batches_rejected: _Optional[int] = ..., targets_per_second: _Optional[float] = ..., last_push_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
