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

class EpisodeEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EPISODE_EVENT_TYPE_UNSPECIFIED: _ClassVar[EpisodeEventType]
    EPISODE_EVENT_TYPE_STORED: _ClassVar[EpisodeEventType]
    EPISODE_EVENT_TYPE_CAUGHT_UP: _ClassVar[EpisodeEventType]
EPISODE_EVENT_TYPE_UNSPECIFIED: EpisodeEventType
EPISODE_EVENT_TYPE_STORED: EpisodeEventType
EPISODE_EVENT_TYPE_CAUGHT_UP: EpisodeEventType

class UploadEpisodeHeader(_message.Message):
    __slots__ = ("episode_id", "robot_id", "task", "total_bytes", "sha256")
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROBOT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    episode_id: str
    robot_id: str
    task: str
    total_bytes: int
    sha256: str
    def __init__(self, episode_id: _Optional[str] = ..., robot_id: _Optional[str] = ..., task: _Optional[str] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class PutEpisodeRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UploadEpisodeHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UploadEpisodeHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadEpisodeChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UploadEpisodeHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UploadEpisodeHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class EpisodeSummary(_message.Message):
    __slots__ = ("episode_id", "robot_id", "task", "policy_version", "policy_name", "num_steps", "start_time", "end_time", "stored_time", "size_bytes", "sha256", "terminated_by_policy", "metadata", "storage_key", "storage_offset")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROBOT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_STEPS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    STORED_TIME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TERMINATED_BY_POLICY_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    STORAGE_KEY_FIELD_NUMBER: _ClassVar[int]
    STORAGE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    episode_id: str
    robot_id: str
    task: str
    policy_version: int
    policy_name: str
    num_steps: int
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    stored_time: _timestamp_pb2.Timestamp
    size_bytes: int
    sha256: str
    terminated_by_policy: bool
    metadata: _containers.ScalarMap[str, str]
    storage_key: str
    storage_offset: int
    def __init__(self, episode_id: _Optional[str] = ..., robot_id: _Optional[str] = ..., task: _Optional[str] = ..., policy_version: _Optional[int] = ..., policy_name: _Optional[str] = ..., num_steps: _Optional[int] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stored_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., terminated_by_policy: _Optional[bool] = ..., metadata: _Optional[_Mapping[str, str]] = ..., storage_key: _Optional[str] = ..., storage_offset: _Optional[int] = ...) -> None: ...

class UploadEpisodeResponse(_message.Message):
    __slots__ = ("episode", "already_existed")
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    ALREADY_EXISTED_FIELD_NUMBER: _ClassVar[int]
    episode: EpisodeSummary
    already_existed: bool
    def __init__(self, episode: _Optional[_Union[EpisodeSummary, _Mapping]] = ..., already_existed: _Optional[bool] = ...) -> None: ...

class GetEpisodeRequest(_message.Message):
    __slots__ = ("episode_id",)
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    episode_id: str
    def __init__(self, episode_id: _Optional[str] = ...) -> None: ...

class GetEpisodeResponse(_message.Message):
    __slots__ = ("summary", "episode")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    summary: EpisodeSummary
    episode: _common_pb2.Episode
    def __init__(self, summary: _Optional[_Union[EpisodeSummary, _Mapping]] = ..., episode: _Optional[_Union[_common_pb2.Episode, _Mapping]] = ...) -> None: ...

class ListEpisodesRequest(_message.Message):
    __slots__ = ("start_time", "end_time", "robot_id", "task", "page_size", "page_token")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    ROBOT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    robot_id: str
    task: str
    page_size: int
    page_token: str
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., robot_id: _Optional[str] = ..., task: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEpisodesResponse(_message.Message):
    __slots__ = ("episodes", "next_page_token")
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    episodes: _containers.RepeatedCompositeFieldContainer[EpisodeSummary]
    next_page_token: str
    def __init__(self, episodes: _Optional[_Iterable[_Union[EpisodeSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchEpisodesRequest(_message.Message):
    __slots__ = ("cursor", "backfill", "task", "robot_id")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    BACKFILL_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ROBOT_ID_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    backfill: bool
    task: str
    robot_id: str
    def __init__(self, cursor: _Optional[str] = ..., backfill: _Optional[bool] = ..., task: _Optional[str] = ..., robot_id: _Optional[str] = ...) -> None: ...

class EpisodeEvent(_message.Message):
    __slots__ = ("type", "episode", "cursor", "backfill")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    BACKFILL_FIELD_NUMBER: _ClassVar[int]
    type: EpisodeEventType
    episode: EpisodeSummary
    cursor: str
    backfill: bool
    def __init__(self, type: _Optional[_Union[EpisodeEventType, str]] = ..., episode: _Optional[_Union[EpisodeSummary, _Mapping]] = ..., cursor: _Optional[str] = ..., backfill: _Optional[bool] = ...) -> None: ...
