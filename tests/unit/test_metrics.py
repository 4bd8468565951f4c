"""The /metrics endpoint and the liveness URL, without a cluster."""

from __future__ import annotations

import socket
import urllib.request

from pitstop import __version__, metrics
from pitstop.runner import liveness_endpoint


def test_metrics_served_on_the_given_address() -> None:
    server = metrics.serve(0, addr="127.0.0.1")  # port 0: the OS picks a free one
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as r:
            body = r.read().decode()
    finally:
        server.close()
    assert 'pitstop_build_info{kopf_version="' in body
    assert f'version="{__version__}"' in body
    assert "pitstop_up 0.0" in body
    assert "process_resident_memory_bytes" in body


def test_metrics_port_in_use_is_an_oserror() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        try:
            metrics.serve(port, addr="127.0.0.1").close()
        except OSError:
            pass
        else:
            raise AssertionError("binding a used port should fail")


def test_liveness_endpoint() -> None:
    assert liveness_endpoint("0.0.0.0", 8080) == "http://0.0.0.0:8080/healthz"
    assert liveness_endpoint("::", 8080) == "http://[::]:8080/healthz"
