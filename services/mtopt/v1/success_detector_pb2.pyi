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

class SdVersionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SD_VERSION_STATE_UNSPECIFIED: _ClassVar[SdVersionState]
    SD_VERSION_STATE_PENDING: _ClassVar[SdVersionState]
    SD_VERSION_STATE_TRAINING: _ClassVar[SdVersionState]
    SD_VERSION_STATE_READY: _ClassVar[SdVersionState]
    SD_VERSION_STATE_FAILED: _ClassVar[SdVersionState]
SD_VERSION_STATE_UNSPECIFIED: SdVersionState
SD_VERSION_STATE_PENDING: SdVersionState
SD_VERSION_STATE_TRAINING: SdVersionState
SD_VERSION_STATE_READY: SdVersionState
SD_VERSION_STATE_FAILED: SdVersionState

class ClassifyRequest(_message.Message):
    __slots__ = ("images", "tasks", "sd_version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    SD_VERSION_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    tasks: _containers.RepeatedScalarFieldContainer[str]
    sd_version: int
    def __init__(self, images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., tasks: _Optional[_Iterable[str]] = ..., sd_version: _Optional[int] = ...) -> None: ...

class ImageScores(_message.Message):
    __slots__ = ("probabilities",)
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, probabilities: _Optional[_Iterable[float]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("scores", "tasks", "sd_version")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    SD_VERSION_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[ImageScores]
    tasks: _containers.RepeatedScalarFieldContainer[str]
    sd_version: int
    def __init__(self, scores: _Optional[_Iterable[_Union[ImageScores, _Mapping]]] = ..., tasks: _Optional[_Iterable[str]] = ..., sd_version: _Optional[int] = ...) -> None: ...

class LabelledExample(_message.Message):
    __slots__ = ("example_id", "image", "task", "success", "source", "episode_id")
    EXAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    example_id: str
    image: _common_pb2.Image
    task: str
    success: bool
    source: str
    episode_id: str
    def __init__(self, example_id: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., task: _Optional[str] = ..., success: _Optional[bool] = ..., source: _Optional[str] = ..., episode_id: _Optional[str] = ...) -> None: ...

class AddExamplesRequest(_message.Message):
    __slots__ = ("examples",)
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    examples: _containers.RepeatedCompositeFieldContainer[LabelledExample]
    def __init__(self, examples: _Optional[_Iterable[_Union[LabelledExample, _Mapping]]] = ...) -> None: ...

class TaskExampleCount(_message.Message):
    __slots__ = ("task", "positives", "negatives")
    TASK_FIELD_NUMBER: _ClassVar[int]
    POSITIVES_FIELD_NUMBER: _ClassVar[int]
    NEGATIVES_FIELD_NUMBER: _ClassVar[int]
    task: str
    positives: int
    negatives: int
    def __init__(self, task: _Optional[str] = ..., positives: _Optional[int] = ..., negatives: _Optional[int] = ...) -> None: ...

class AddExamplesResponse(_message.Message):
    __slots__ = ("added", "duplicates", "counts")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    added: int
    duplicates: int
    counts: _containers.RepeatedCompositeFieldContainer[TaskExampleCount]
    def __init__(self, added: _Optional[int] = ..., duplicates: _Optional[int] = ..., counts: _Optional[_Iterable[_Union[TaskExampleCount, _Mapping]]] = ...) -> None: ...

class TrainVersionRequest(_message.Message):
    __slots__ = ("request_id", "tasks", "base_version", "train_steps", "promote_when_ready", "focus_source", "focus_share")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRAIN_STEPS_FIELD_NUMBER: _ClassVar[int]
    PROMOTE_WHEN_READY_FIELD_NUMBER: _ClassVar[int]
    FOCUS_SOURCE_FIELD_NUMBER: _ClassVar[int]
    FOCUS_SHARE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tasks: _containers.RepeatedScalarFieldContainer[str]
    base_version: int
    train_steps: int
    promote_when_ready: bool
    focus_source: str
    focus_share: float
    def __init__(self, request_id: _Optional[str] = ..., tasks: _Optional[_Iterable[str]] = ..., base_version: _Optional[int] = ..., train_steps: _Optional[int] = ..., promote_when_ready: _Optional[bool] = ..., focus_source: _Optional[str] = ..., focus_share: _Optional[float] = ...) -> None: ...

class TrainVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: SdVersion
    def __init__(self, version: _Optional[_Union[SdVersion, _Mapping]] = ...) -> None: ...

class GetSdVersionRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class SdVersion(_message.Message):
    __slots__ = ("version", "state", "tasks", "metrics", "num_examples", "created_time", "finished_time", "error", "base_version", "serving", "registry_version")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISHED_TIME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: SdVersionState
    tasks: _containers.RepeatedCompositeFieldContainer[_common_pb2.Task]
    metrics: _containers.ScalarMap[str, float]
    num_examples: int
    created_time: _timestamp_pb2.Timestamp
    finished_time: _timestamp_pb2.Timestamp
    error: str
    base_version: int
    serving: bool
    registry_version: int
    def __init__(self, version: _Optional[int] = ..., state: _Optional[_Union[SdVersionState, str]] = ..., tasks: _Optional[_Iterable[_Union[_common_pb2.Task, _Mapping]]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., num_examples: _Optional[int] = ..., created_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[str] = ..., base_version: _Optional[int] = ..., serving: _Optional[bool] = ..., registry_version: _Optional[int] = ...) -> None: ...
