"""A lean S3 PUT for episode_store's hot path: one signed request on a kept-alive connection.

Every commit-log segment is one PUT; through minio-py that costs ~0.7 ms of Python per
request (URL building, header dictionaries, urllib3's pool and retry layers, e-mail header
parsing). `S3Putter` does the same request with
``http.client`` directly: AWS Signature V4 with the signing key cached per day, one
connection per thread, the body read to the end so the connection is reused.

    putter = S3Putter("minio:9000", "mtopt", access_key, secret_key, region="us-east-1")
    status, code = putter.put("index/log/date=2026-03-01/01772323200123456789+0+3f2a9c1e", body, {"If-None-Match": "*"})
    # (200, "") stored; (412, "PreconditionFailed") the object exists; other: S3 error code

`list_keys` lists keys the same way (the commit log is listed several times a second: minio-py's
XML parsing of every entry cost more than the request). Everything else (reads, bucket checks)
stays on minio-py.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import http.client
import re
import threading
import time
from urllib.parse import quote

_CODE = re.compile(rb"<Code>([^<]+)</Code>")
_KEY = re.compile(rb"<Key>([^<]*)</Key>")


class S3ListError(RuntimeError):
    """S3 answered a list request with an error."""
_RETRYABLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.CannotSendRequest)


class S3Putter:
    """PUTs objects into one bucket (thread-safe: one connection per calling thread)."""

    def __init__(self, endpoint: str, bucket: str, access_key: str, secret_key: str, *, region: str, secure: bool = False,
                 timeout_s: float = 30.0):
        self.endpoint, self.bucket, self.region = endpoint, bucket, region
        self._access, self._secret = access_key, secret_key
        self._secure, self._timeout = secure, timeout_s
        self._local = threading.local()
        self._keys: dict[str, bytes] = {}
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            cls = http.client.HTTPSConnection if self._secure else http.client.HTTPConnection
            conn = cls(self.endpoint, timeout=self._timeout)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _signing_key(self, day: str) -> bytes:
        key = self._keys.get(day)
        if key is None:
            key = ("AWS4" + self._secret).encode()
            for part in (day, self.region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._keys = {day: key}
        return key

    def _signed_headers(self, path: str, data: bytes, headers: dict[str, str], method: str = "PUT", query: str = "") -> dict[str, str]:
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        payload = hashlib.sha256(data).hexdigest()
        h = {k.lower(): str(v).strip() for k, v in headers.items()}
        h.update({"host": self.endpoint, "x-amz-date": amz_date, "x-amz-content-sha256": payload, "content-length": str(len(data))})
        names = sorted(h)
        signed = ";".join(names)
        canonical = "\n".join([method, path, query, *(f"{n}:{h[n]}" for n in names), "", signed, payload])
        scope = f"{amz_date[:8]}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(amz_date[:8]), to_sign.encode(), hashlib.sha256).hexdigest()
        h["authorization"] = f"AWS4-HMAC-SHA256 Credential={self._access}/{scope}, SignedHeaders={signed}, Signature={signature}"
        return h

    def put(self, key: str, data: bytes, headers: dict[str, str]) -> tuple[int, str]:
        """(HTTP status, S3 error code or ""); OSError/HTTPException if S3 did not answer."""
        path = "/" + quote(self.bucket, safe="") + "/" + quote(key, safe="/-_.~")
        status, body, reason = self._request("PUT", path, "", data, headers)
        if status // 100 == 2:
            return status, ""
        m = _CODE.search(body)
        return status, m[1].decode() if m else reason

    def list_keys(self, prefix: str, start_after: str, max_keys: int) -> list[str]:
        """Up to ``max_keys`` keys under ``prefix`` after ``start_after``, in key order (one
        ListObjectsV2 request; only the keys are parsed). OSError/HTTPException if S3 did not
        answer; S3ListError on an S3 error."""
        params = {"list-type": "2", "max-keys": str(max_keys), "prefix": prefix}
        if start_after:
            params["start-after"] = start_after
        query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items()))
        path = "/" + quote(self.bucket, safe="")
        status, body, reason = self._request("GET", path, query, b"", {})
        if status != 200:
            m = _CODE.search(body)
            raise S3ListError(f"HTTP {status} {m[1].decode() if m else reason}")
        return [html.unescape(k.decode()) for k in _KEY.findall(body)]

    def _request(self, method: str, path: str, query: str, data: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
        target = f"{path}?{query}" if query else path
        for attempt in range(2):
            conn = self._connection(fresh=attempt > 0)
            try:
                conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for name, value in self._signed_headers(path, data, headers, method, query).items():
                    conn.putheader(name, value)
                conn.endheaders(data)
                response = conn.getresponse()
                body = response.read()
            except _RETRYABLE:  # a kept-alive connection the server closed: once more on a new one
                conn.close()
                if attempt:
                    raise
                continue
            except BaseException:
                conn.close()
                raise
            return response.status, body, response.reason
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
