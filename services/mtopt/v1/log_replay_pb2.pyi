import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from mtopt.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImpersonationMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMPERSONATION_MODE_UNSPECIFIED: _ClassVar[ImpersonationMode]
    IMPERSONATION_MODE_ORIG: _ClassVar[ImpersonationMode]
    IMPERSONATION_MODE_ALL: _ClassVar[ImpersonationMode]
    IMPERSONATION_MODE_SKILL: _ClassVar[ImpersonationMode]

class RelabelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RELABEL_STATE_UNSPECIFIED: _ClassVar[RelabelState]
    RELABEL_STATE_RUNNING: _ClassVar[RelabelState]
    RELABEL_STATE_DONE: _ClassVar[RelabelState]
    RELABEL_STATE_FAILED: _ClassVar[RelabelState]
IMPERSONATION_MODE_UNSPECIFIED: ImpersonationMode
IMPERSONATION_MODE_ORIG: ImpersonationMode
IMPERSONATION_MODE_ALL: ImpersonationMode
IMPERSONATION_MODE_SKILL: ImpersonationMode
RELABEL_STATE_UNSPECIFIED: RelabelState
RELABEL_STATE_RUNNING: RelabelState
RELABEL_STATE_DONE: RelabelState
RELABEL_STATE_FAILED: RelabelState

class SampleRequest(_message.Message):
    __slots__ = ("batch_size", "max_batches", "tasks", "success_fraction", "worker_id")
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCHES_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FRACTION_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    max_batches: int
    tasks: _containers.RepeatedScalarFieldContainer[str]
    success_fraction: float
    worker_id: str
    def __init__(self, batch_size: _Optional[int] = ..., max_batches: _Optional[int] = ..., tasks: _Optional[_Iterable[str]] = ..., success_fraction: _Optional[float] = ..., worker_id: _Optional[str] = ...) -> None: ...

class TransitionBatch(_message.Message):
    __slots__ = ("images", "state_features", "actions", "next_images", "next_state_features", "task_indices", "rewards", "dones", "successes", "episode_ids", "tasks", "sd_version", "sequence")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    STATE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_IMAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_STATE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    TASK_INDICES_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    DONES_FIELD_NUMBER: _ClassVar[int]
    SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    EPISODE_IDS_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    SD_VERSION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    images: _common_pb2.Tensor
    state_features: _common_pb2.Tensor
    actions: _common_pb2.Tensor
    next_images: _common_pb2.Tensor
    next_state_features: _common_pb2.Tensor
    task_indices: _common_pb2.Tensor
    rewards: _common_pb2.Tensor
    dones: _common_pb2.Tensor
    successes: _common_pb2.Tensor
    episode_ids: _containers.RepeatedScalarFieldContainer[str]
    tasks: _containers.RepeatedCompositeFieldContainer[_common_pb2.Task]
    sd_version: int
    sequence: int
    def __init__(self, images: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., state_features: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., actions: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., next_images: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., next_state_features: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., task_indices: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., rewards: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., dones: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., successes: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., episode_ids: _Optional[_Iterable[str]] = ..., tasks: _Optional[_Iterable[_Union[_common_pb2.Task, _Mapping]]] = ..., sd_version: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TaskBufferStats(_message.Message):
    __slots__ = ("task", "success_transitions", "failure_transitions", "success_episodes", "failure_episodes", "bytes")
    TASK_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_EPISODES_FIELD_NUMBER: _ClassVar[int]
    FAILURE_EPISODES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    task: str
    success_transitions: int
    failure_transitions: int
    success_episodes: int
    failure_episodes: int
    bytes: int
    def __init__(self, task: _Optional[str] = ..., success_transitions: _Optional[int] = ..., failure_transitions: _Optional[int] = ..., success_episodes: _Optional[int] = ..., failure_episodes: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class RelabelProgress(_message.Message):
    __slots__ = ("sd_version", "state", "episodes_done", "episodes_total", "started_time", "finished_time", "error")
    SD_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EPISODES_DONE_FIELD_NUMBER: _ClassVar[int]
    EPISODES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    STARTED_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISHED_TIME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    sd_version: int
    state: RelabelState
    episodes_done: int
    episodes_total: int
    started_time: _timestamp_pb2.Timestamp
    finished_time: _timestamp_pb2.Timestamp
    error: str
    def __init__(self, sd_version: _Optional[int] = ..., state: _Optional[_Union[RelabelState, str]] = ..., episodes_done: _Optional[int] = ..., episodes_total: _Optional[int] = ..., started_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class ReplayStats(_message.Message):
    __slots__ = ("tasks", "bytes_total", "episodes_processed", "cursor", "sd_version", "impersonation", "relabel", "batches_served", "caught_up")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    EPISODES_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    SD_VERSION_FIELD_NUMBER: _ClassVar[int]
    IMPERSONATION_FIELD_NUMBER: _ClassVar[int]
    RELABEL_FIELD_NUMBER: _ClassVar[int]
    BATCHES_SERVED_FIELD_NUMBER: _ClassVar[int]
    CAUGHT_UP_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskBufferStats]
    bytes_total: int
    episodes_processed: int
    cursor: str
    sd_version: int
    impersonation: ImpersonationMode
    relabel: RelabelProgress
    batches_served: int
    caught_up: bool
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskBufferStats, _Mapping]]] = ..., bytes_total: _Optional[int] = ..., episodes_processed: _Optional[int] = ..., cursor: _Optional[str] = ..., sd_version: _Optional[int] = ..., impersonation: _Optional[_Union[ImpersonationMode, str]] = ..., relabel: _Optional[_Union[RelabelProgress, _Mapping]] = ..., batches_served: _Optional[int] = ..., caught_up: _Optional[bool] = ...) -> None: ...

class RelabelRequest(_message.Message):
    __slots__ = ("sd_version", "tasks")
    SD_VERSION_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    sd_version: int
    tasks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sd_version: _Optional[int] = ..., tasks: _Optional[_Iterable[str]] = ...) -> None: ...

class RelabelResponse(_message.Message):
    __slots__ = ("progress", "already_started")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ALREADY_STARTED_FIELD_NUMBER: _ClassVar[int]
    progress: RelabelProgress
    already_started: bool
    def __init__(self, progress: _Optional[_Union[RelabelProgress, _Mapping]] = ..., already_started: _Optional[bool] = ...) -> None: ...
