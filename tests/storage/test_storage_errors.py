"""Bad storage settings are clear errors that name the setting, against a real S3 server."""

from __future__ import annotations

import uuid

import pytest
from support import free_port

from pipelines.errors import StorageError
from pipelines.storage import open_store


def test_s3_store_opens_and_keeps_what_is_written(s3_bucket):
    from pipelines.storage import write_bytes

    fs, root = open_store(f"{s3_bucket.url}/probe", setting="checkpoint.uri")
    write_bytes(fs, f"{root}/a.bin", b"first")
    write_bytes(fs, f"{root}/a.bin", b"second")
    assert fs.cat_file(f"{root}/a.bin") == b"second"


def test_missing_bucket_names_the_setting_and_the_fix(s3_bucket):
    with pytest.raises(StorageError) as info:
        open_store("s3://no-such-bucket/ckpt", setting="checkpoint.uri")
    msg = str(info.value)
    assert "checkpoint.uri=s3://no-such-bucket/ckpt" in msg
    assert "bucket does not exist" in msg and "create the bucket" in msg


def test_wrong_credentials_name_the_setting_and_the_variables(s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(StorageError) as info:
        open_store(f"{s3_bucket.url}/cache", setting="data.cache_dir")
    msg = str(info.value)
    assert f"data.cache_dir={s3_bucket.url}/cache" in msg
    assert "refused the credentials" in msg and "AWS_ACCESS_KEY_ID" in msg
    assert "does not exist in our records" in msg  # S3's own reason: the key is unknown


def test_unreachable_endpoint_is_an_error_not_a_hang(s3_bucket, monkeypatch):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    with pytest.raises(StorageError) as info:
        open_store(f"{s3_bucket.url}/ckpt", setting="checkpoint.uri")
    msg = str(info.value)
    assert f"could not be reached at AWS_ENDPOINT_URL={closed}" in msg
    assert "set AWS_ENDPOINT_URL" in msg


def test_a_bucket_the_key_may_not_read_names_the_setting_and_the_fix(s3_bucket, monkeypatch):
    import boto3

    # a real user of the store, with a valid key but no policy: S3 answers 403 Access Denied
    iam = boto3.client("iam", endpoint_url=s3_bucket.endpoint, region_name="us-east-1")
    user = f"no-access-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    with pytest.raises(StorageError) as info:
        open_store(f"{s3_bucket.url}/ckpt", setting="checkpoint.uri")
    msg = str(info.value)
    assert f"checkpoint.uri={s3_bucket.url}/ckpt" in msg
    assert "knows these credentials but refused them access (" in msg
    assert "'candleray-tests': Access Denied" in msg
    assert "grant that key s3:ListBucket" in msg and "AWS_ACCESS_KEY_ID" in msg  # the fix
