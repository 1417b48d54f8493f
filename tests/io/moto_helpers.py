"""An S3-compatible server (moto) on 127.0.0.1 with one bucket, for the tests of stores and artefacts on s3://."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def moto_bucket(bucket: str = "medgen") -> Iterator[dict]:
    """Start moto's threaded server on a free port of 127.0.0.1, create ``bucket``; yields the fsspec/s3fs
    storage options that reach it (credentials and ``endpoint_url``); stops the server on exit."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                     region_name="us-east-1").create_bucket(Bucket=bucket)
        yield {"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    finally:
        server.stop()
