"""Fixtures for the service tests (helpers in store_harness.py): a real MinIO server, an asyncio
loop thread for grpc.aio servers, and episode_store harnesses on both backends."""

from __future__ import annotations

import pytest

from harness_factory import closing_factory
from registry_harness import RegistryHarness, registry_config
from store_harness import LoopThread, MinioInfo, MinioNotInstalled, StoreHarness, run_minio, store_config


@pytest.fixture(scope="session")
def minio_server(tmp_path_factory) -> MinioInfo:
    """A real MinIO server for the whole session; tests that need it fail (not skip) without it."""
    try:
        server = run_minio(tmp_path_factory.mktemp("minio-data"))
        info = server.__enter__()
    except MinioNotInstalled as e:
        missing = str(e)
    else:
        try:
            yield info
        finally:
            server.__exit__(None, None, None)
        return
    pytest.fail(missing, pytrace=False)


@pytest.fixture(scope="session")
def aio_loop() -> LoopThread:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(params=["local", "s3"])
def backend_kind(request) -> str:
    return request.param


@pytest.fixture
def make_store(request, aio_loop, tmp_path, backend_kind):
    """Factory: make_store(**config_overrides) -> a started StoreHarness (stopped after the test)."""

    def make(backend_factory=None, **overrides) -> StoreHarness:
        minio = request.getfixturevalue("minio_server") if backend_kind == "s3" else None
        return StoreHarness(aio_loop, store_config(tmp_path, backend_kind, minio, **overrides), backend_kind, backend_factory)

    with closing_factory(make) as factory:
        yield factory


@pytest.fixture
def store(make_store) -> StoreHarness:
    return make_store()


@pytest.fixture
def make_registry(request, aio_loop, tmp_path, backend_kind):
    """Factory: make_registry(**config_overrides) -> a started RegistryHarness (stopped after the test)."""

    def make(objects_factory=None, **overrides) -> RegistryHarness:
        minio = request.getfixturevalue("minio_server") if backend_kind == "s3" else None
        return RegistryHarness(aio_loop, registry_config(tmp_path, backend_kind, minio, **overrides), objects_factory)

    with closing_factory(make) as factory:
        yield factory


@pytest.fixture
def registry(make_registry) -> RegistryHarness:
    return make_registry()
