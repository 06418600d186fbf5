"""A ``ray.address`` whose port answers but is no Ray head (the dashboard's port, another
service) is an error naming the setting at once: Ray's own connect would retry it for some 12
minutes. A real head's GCS passes the same check."""

from __future__ import annotations

import http.server
import threading

import pytest
import ray

from pipelines.cluster import check_reachable
from pipelines.errors import ClusterError


def test_a_port_that_is_not_a_ray_head_is_an_error_naming_the_setting():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(ClusterError) as info:
            check_reachable(address)
    finally:
        server.shutdown()
        server.server_close()
    msg = str(info.value)
    assert f"ray.address={address!r}: something answers at {address}, but not a Ray head" in msg
    assert "it does not speak gRPC; its first bytes: b'<!DOCTYPE'" in msg  # what answered
    assert "ray start --head --port" in msg  # the fix


@pytest.mark.ray
def test_a_ray_heads_gcs_passes_the_check(ray_cluster):
    check_reachable(ray.get_runtime_context().gcs_address)
