"""S3 (MinIO) pieces shared by the services that store objects in a bucket.

- `read_s3_credentials`: the S3 credentials from MTOPT_S3_ACCESS_KEY / MTOPT_S3_SECRET_KEY
  (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), as ``load_config`` overrides.
- `check_s3_settings`: the ``__post_init__`` checks of a config's s3_* fields when backend=s3.
- `s3_backend_args`: a config's s3_* fields as the arguments of a MinIO-backed store.
- `make_minio_client`: a ``minio.Minio`` client with a bounded, retrying connection pool.
- `S3Settings`: the s3_* fields every storage service's config dataclass inherits.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from mtopt.serving.config import check

@dataclasses.dataclass(frozen=True)
class S3Settings:
    """The S3 settings of a service that stores objects (used when its backend is s3).

    A service's config inherits them, so they read as ``<PREFIX>S3_ENDPOINT`` and so on::

        @dataclasses.dataclass(frozen=True)
        class TrainerConfig(S3Settings):
            backend: str = "local"
            ...
            def __post_init__(self):
                if self.backend == "s3":
                    check_s3_settings(self, PREFIX)
    """

    s3_endpoint: str = ""
    """host:port of the S3 endpoint, e.g. minio:9000 (required when backend=s3)."""
    s3_bucket: str = "mtopt"
    """Bucket (may be shared by every service: each writes only under its own prefix, see docs/architecture.md)."""
    s3_secure: bool = False
    """Use HTTPS for the S3 endpoint."""
    s3_region: str = ""
    """S3 region (empty: the endpoint's default)."""
    s3_create_bucket: bool = True
    """Create the bucket if it does not exist."""
    s3_access_key: str = dataclasses.field(default="", repr=False)
    """S3 access key; set MTOPT_S3_ACCESS_KEY (or AWS_ACCESS_KEY_ID)."""
    s3_secret_key: str = dataclasses.field(default="", repr=False)
    """S3 secret key; set MTOPT_S3_SECRET_KEY (or AWS_SECRET_ACCESS_KEY)."""


CREDENTIALS_HELP = "MTOPT_S3_ACCESS_KEY / MTOPT_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY): S3 credentials"


def read_s3_credentials(env: Mapping[str, str]) -> dict[str, str]:
    """{"s3_access_key": ..., "s3_secret_key": ...} for those of the two that are set in ``env``."""
    extra = {}
    access = env.get("MTOPT_S3_ACCESS_KEY") or env.get("AWS_ACCESS_KEY_ID")
    secret = env.get("MTOPT_S3_SECRET_KEY") or env.get("AWS_SECRET_ACCESS_KEY")
    if access:
        extra["s3_access_key"] = access
    if secret:
        extra["s3_secret_key"] = secret
    return extra


def check_s3_settings(config: Any, prefix: str) -> None:
    """ConfigError naming the variable to fix unless ``config``'s s3_* settings are usable."""
    v = lambda name: prefix + name.upper()  # noqa: E731
    check(bool(config.s3_endpoint), v("s3_endpoint"), "must be set to host:port of MinIO/S3 when backend=s3")
    check("://" not in config.s3_endpoint, v("s3_endpoint"), f"must be host:port without a scheme (use {v('s3_secure')} for https), got {config.s3_endpoint!r}")
    check(bool(config.s3_bucket), v("s3_bucket"), "must name a bucket")
    check(bool(config.s3_access_key and config.s3_secret_key), "MTOPT_S3_ACCESS_KEY/MTOPT_S3_SECRET_KEY", "(or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) must be set when backend=s3")


def s3_backend_args(config: Any) -> dict[str, Any]:
    """Keyword arguments (endpoint, bucket, credentials, secure, region, create_bucket) from ``config``'s s3_* fields."""
    return dict(
        endpoint=config.s3_endpoint, bucket=config.s3_bucket, access_key=config.s3_access_key, secret_key=config.s3_secret_key,
        secure=config.s3_secure, region=config.s3_region or None, create_bucket=config.s3_create_bucket,
    )


def make_minio_client(
    endpoint: str, access_key: str, secret_key: str, *, secure: bool = False, region: str | None = None,
    max_connections: int = 32, timeout_s: float = 30.0,
):
    """(minio.Minio client, its urllib3.PoolManager): at most ``max_connections`` connections,
    ``timeout_s`` read timeout, 2 retries on 5xx."""
    import urllib3
    from minio import Minio

    http = urllib3.PoolManager(
        maxsize=max_connections,
        timeout=urllib3.Timeout(connect=min(5.0, timeout_s), read=timeout_s),
        retries=urllib3.Retry(total=2, backoff_factor=0.1, status_forcelist=[500, 502, 503, 504]),
    )
    return Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region, http_client=http), http
