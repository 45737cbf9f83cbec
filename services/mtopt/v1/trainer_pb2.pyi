import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from mtopt.v1 import bellman_pb2 as _bellman_pb2
from mtopt.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PushAck(_message.Message):
    __slots__ = ("accepted", "duplicate", "buffer_fill", "buffer_size", "buffer_capacity", "retry_after_ms", "trainer_step")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    BUFFER_FILL_FIELD_NUMBER: _ClassVar[int]
    BUFFER_SIZE_FIELD_NUMBER: _ClassVar[int]
    BUFFER_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    TRAINER_STEP_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    duplicate: bool
    buffer_fill: float
    buffer_size: int
    buffer_capacity: int
    retry_after_ms: int
    trainer_step: int
    def __init__(self, accepted: _Optional[bool] = ..., duplicate: _Optional[bool] = ..., buffer_fill: _Optional[float] = ..., buffer_size: _Optional[int] = ..., buffer_capacity: _Optional[int] = ..., retry_after_ms: _Optional[int] = ..., trainer_step: _Optional[int] = ...) -> None: ...

class GetTrainerStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TrainerStatus(_message.Message):
    __slots__ = ("step", "loss", "loss_ema", "buffer_size", "buffer_capacity", "last_published_version", "last_published_time", "batches_accepted", "batches_rejected", "steps_per_second", "tasks", "last_checkpoint_step")
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LOSS_EMA_FIELD_NUMBER: _ClassVar[int]
    BUFFER_SIZE_FIELD_NUMBER: _ClassVar[int]
    BUFFER_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LAST_PUBLISHED_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_PUBLISHED_TIME_FIELD_NUMBER: _ClassVar[int]
    BATCHES_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_REJECTED_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_STEP_FIELD_NUMBER: _ClassVar[int]
    step: int
    loss: float
    loss_ema: float
    buffer_size: int
    buffer_capacity: int
    last_published_version: int
    last_published_time: _timestamp_pb2.Timestamp
    batches_accepted: int
    batches_rejected: int
    steps_per_second: float
    tasks: _containers.RepeatedCompositeFieldContainer[_common_pb2.Task]
    last_checkpoint_step: int
    def __init__(self, step: _Optional[int] = ..., loss: _Optional[float] = ..., loss_ema: _Optional[float] = ..., buffer_size: _Optional[int] = ..., buffer_capacity: _Optional[int] = ..., last_published_version: _Optional[int] = ..., last_published_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., batches_accepted: _Optional[int] = ..., batches_rejected: _Optional[int] = ..., steps_per_second: _Optional[float] = ..., tasks: _Optional[_Iterable[_Union[_common_pb2.Task, _Mapping]]] = ..., last_checkpoint_step: _Optional[int] = ...) -> None: ...

class CheckpointRequest(_message.Message):
    __slots__ = ("publish", "aliases", "reason")
    PUBLISH_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    publish: bool
    aliases: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    def __init__(self, publish: _Optional[bool] = ..., aliases: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ...) -> None: ...

class CheckpointResponse(_message.Message):
    __slots__ = ("step", "checkpoint_uri", "published_version")
    STEP_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_URI_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_VERSION_FIELD_NUMBER: _ClassVar[int]
    step: int
    checkpoint_uri: str
    published_version: _common_pb2.ModelVersion
    def __init__(self, step: _Optional[int] = ..., checkpoint_uri: _Optional[str] = ..., published_version: _Optional[_Union[_common_pb2.ModelVersion, _Mapping]] = ...) -> None: ...
