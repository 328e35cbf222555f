"""
Fetching inbound mail that SES stored in S3: the one place that talks to S3.

boto3 finds its credentials the usual way (environment, config files, an
instance role). SES_INBOUND_S3_ENDPOINT_URL points it elsewhere (a local
stand-in in tests).
"""

from __future__ import annotations

import functools
import logging

from django.conf import settings

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 30


class S3FetchFailed(Exception):
    pass


@functools.lru_cache(maxsize=4)
def _client(region: str | None, endpoint_url: str | None):
    # Imported here, not at the top: boto3 costs every process about 25 MB
    # (the admin imports this module), and only S3 inbound mail needs it.
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        retries={"max_attempts": 2, "mode": "standard"},
        # A custom endpoint (a stand-in, MinIO) rarely has per-bucket hosts.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
    )
    return boto3.session.Session().client(
        "s3", region_name=region, endpoint_url=endpoint_url, config=config
    )


def fetch_object(*, bucket: str, key: str, max_bytes: int) -> bytes:
    """Return the object's bytes; raise S3FetchFailed if it cannot be had."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = _client(
        settings.SES_INBOUND_S3_REGION, settings.SES_INBOUND_S3_ENDPOINT_URL
    )
    try:
        response = client.get_object(Bucket=bucket, Key=key)
        if response.get("ContentLength", 0) > max_bytes:
            raise S3FetchFailed(f"larger than {max_bytes} bytes")
        body = response["Body"].read(max_bytes + 1)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise S3FetchFailed(f"S3 answered {code}") from exc
    except BotoCoreError as exc:
        raise S3FetchFailed(str(exc)) from exc
    if len(body) > max_bytes:
        raise S3FetchFailed(f"larger than {max_bytes} bytes")
    logger.info(
        "fetched inbound mail from S3 bucket=%s key=%s bytes=%d", bucket, key, len(body)
    )
    return body
