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

class ResolveSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESOLVE_SOURCE_UNSPECIFIED: _ClassVar[ResolveSource]
    RESOLVE_SOURCE_PIN: _ClassVar[ResolveSource]
    RESOLVE_SOURCE_ALIAS: _ClassVar[ResolveSource]

class VersionEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERSION_EVENT_TYPE_UNSPECIFIED: _ClassVar[VersionEventType]
    VERSION_EVENT_TYPE_PUBLISHED: _ClassVar[VersionEventType]
    VERSION_EVENT_TYPE_ALIAS_SET: _ClassVar[VersionEventType]
    VERSION_EVENT_TYPE_PINNED: _ClassVar[VersionEventType]
    VERSION_EVENT_TYPE_UNPINNED: _ClassVar[VersionEventType]
    VERSION_EVENT_TYPE_ROLLED_BACK: _ClassVar[VersionEventType]
    VERSION_EVENT_TYPE_RESOLVED: _ClassVar[VersionEventType]
RESOLVE_SOURCE_UNSPECIFIED: ResolveSource
RESOLVE_SOURCE_PIN: ResolveSource
RESOLVE_SOURCE_ALIAS: ResolveSource
VERSION_EVENT_TYPE_UNSPECIFIED: VersionEventType
VERSION_EVENT_TYPE_PUBLISHED: VersionEventType
VERSION_EVENT_TYPE_ALIAS_SET: VersionEventType
VERSION_EVENT_TYPE_PINNED: VersionEventType
VERSION_EVENT_TYPE_UNPINNED: VersionEventType
VERSION_EVENT_TYPE_ROLLED_BACK: VersionEventType
VERSION_EVENT_TYPE_RESOLVED: VersionEventType

class PublishHeader(_message.Message):
    __slots__ = ("model", "publish_id", "step", "parent_version", "metrics", "artifacts", "aliases", "tasks", "labels")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    model: str
    publish_id: str
    step: int
    parent_version: int
    metrics: _containers.ScalarMap[str, float]
    artifacts: _containers.RepeatedCompositeFieldContainer[_common_pb2.Artifact]
    aliases: _containers.RepeatedScalarFieldContainer[str]
    tasks: _containers.RepeatedCompositeFieldContainer[_common_pb2.Task]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, model: _Optional[str] = ..., publish_id: _Optional[str] = ..., step: _Optional[int] = ..., parent_version: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., artifacts: _Optional[_Iterable[_Union[_common_pb2.Artifact, _Mapping]]] = ..., aliases: _Optional[_Iterable[str]] = ..., tasks: _Optional[_Iterable[_Union[_common_pb2.Task, _Mapping]]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ArtifactData(_message.Message):
    __slots__ = ("artifact_name", "data")
    ARTIFACT_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    artifact_name: str
    data: bytes
    def __init__(self, artifact_name: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class PublishChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: PublishHeader
    data: ArtifactData
    def __init__(self, header: _Optional[_Union[PublishHeader, _Mapping]] = ..., data: _Optional[_Union[ArtifactData, _Mapping]] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("version", "already_existed")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALREADY_EXISTED_FIELD_NUMBER: _ClassVar[int]
    version: _common_pb2.ModelVersion
    already_existed: bool
    def __init__(self, version: _Optional[_Union[_common_pb2.ModelVersion, _Mapping]] = ..., already_existed: _Optional[bool] = ...) -> None: ...

class GetModelVersionRequest(_message.Message):
    __slots__ = ("model", "version", "alias")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    alias: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., alias: _Optional[str] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("model", "page_size", "page_token")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model: str
    page_size: int
    page_token: str
    def __init__(self, model: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token", "aliases")
    class AliasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelVersion]
    next_page_token: str
    aliases: _containers.ScalarMap[str, int]
    def __init__(self, versions: _Optional[_Iterable[_Union[_common_pb2.ModelVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., aliases: _Optional[_Mapping[str, int]] = ...) -> None: ...

class GetArtifactRequest(_message.Message):
    __slots__ = ("model", "version", "name", "kind", "offset")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    name: str
    kind: _common_pb2.ArtifactKind
    offset: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., name: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.ArtifactKind, str]] = ..., offset: _Optional[int] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("artifact", "offset", "data")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    artifact: _common_pb2.Artifact
    offset: int
    data: bytes
    def __init__(self, artifact: _Optional[_Union[_common_pb2.Artifact, _Mapping]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class SetAliasRequest(_message.Message):
    __slots__ = ("model", "alias", "version", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    alias: str
    version: int
    reason: str
    def __init__(self, model: _Optional[str] = ..., alias: _Optional[str] = ..., version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class SetAliasResponse(_message.Message):
    __slots__ = ("version", "previous_version")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: _common_pb2.ModelVersion
    previous_version: int
    def __init__(self, version: _Optional[_Union[_common_pb2.ModelVersion, _Mapping]] = ..., previous_version: _Optional[int] = ...) -> None: ...

class PinRequest(_message.Message):
    __slots__ = ("model", "robot_id", "version", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROBOT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    robot_id: str
    version: int
    reason: str
    def __init__(self, model: _Optional[str] = ..., robot_id: _Optional[str] = ..., version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class PinResponse(_message.Message):
    __slots__ = ("version", "previous_version")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: _common_pb2.ModelVersion
    previous_version: int
    def __init__(self, version: _Optional[_Union[_common_pb2.ModelVersion, _Mapping]] = ..., previous_version: _Optional[int] = ...) -> None: ...

class UnpinRequest(_message.Message):
    __slots__ = ("model", "robot_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROBOT_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    robot_id: str
    def __init__(self, model: _Optional[str] = ..., robot_id: _Optional[str] = ...) -> None: ...

class UnpinResponse(_message.Message):
    __slots__ = ("was_pinned", "previous_version")
    WAS_PINNED_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    was_pinned: bool
    previous_version: int
    def __init__(self, was_pinned: _Optional[bool] = ..., previous_version: _Optional[int] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("model", "alias", "to_version", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    alias: str
    to_version: int
    reason: str
    def __init__(self, model: _Optional[str] = ..., alias: _Optional[str] = ..., to_version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("alias", "from_version", "version")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    alias: str
    from_version: int
    version: _common_pb2.ModelVersion
    def __init__(self, alias: _Optional[str] = ..., from_version: _Optional[int] = ..., version: _Optional[_Union[_common_pb2.ModelVersion, _Mapping]] = ...) -> None: ...

class ResolveRequest(_message.Message):
    __slots__ = ("model", "robot_id", "alias")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROBOT_ID_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    model: str
    robot_id: str
    alias: str
    def __init__(self, model: _Optional[str] = ..., robot_id: _Optional[str] = ..., alias: _Optional[str] = ...) -> None: ...

class ResolveResponse(_message.Message):
    __slots__ = ("version", "source", "alias")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    version: _common_pb2.ModelVersion
    source: ResolveSource
    alias: str
    def __init__(self, version: _Optional[_Union[_common_pb2.ModelVersion, _Mapping]] = ..., source: _Optional[_Union[ResolveSource, str]] = ..., alias: _Optional[str] = ...) -> None: ...

class WatchVersionsRequest(_message.Message):
    __slots__ = ("model", "after_sequence", "robot_id", "alias", "send_initial")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ROBOT_ID_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    SEND_INITIAL_FIELD_NUMBER: _ClassVar[int]
    model: str
    after_sequence: int
    robot_id: str
    alias: str
    send_initial: bool
    def __init__(self, model: _Optional[str] = ..., after_sequence: _Optional[int] = ..., robot_id: _Optional[str] = ..., alias: _Optional[str] = ..., send_initial: _Optional[bool] = ...) -> None: ...

class VersionEvent(_message.Message):
    __slots__ = ("sequence", "type", "model", "version", "alias", "robot_id", "previous_version", "time")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    ROBOT_ID_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    type: VersionEventType
    model: str
    version: _common_pb2.ModelVersion
    alias: str
    robot_id: str
    previous_version: int
    time: _timestamp_pb2.Timestamp
    def __init__(self, sequence: _Optional[int] = ..., type: _Optional[_Union[VersionEventType, str]] = ..., model: _Optional[str] = ..., version: _Optional[_Union[_common_pb2.ModelVersion, _Mapping]] = ..., alias: _Optional[str] = ..., robot_id: _Optional[str] = ..., previous_version: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
