"""The operator's own API client goes through the kubeconfig's proxy-url, as kopf's
watches do: a real proxy on loopback (aiohttp) sees the request in absolute form."""

from __future__ import annotations

import asyncio

import kopf
from aiohttp import web

from pitstop.cluster.kube import Kube


async def _through(proxy_url: str | None) -> list[str]:
    """The targets the proxy was asked for while Kube read one node."""
    seen: list[str] = []

    async def proxy(request: web.Request) -> web.Response:
        seen.append(str(request.url))  # an absolute-form target: the request came via us
        return web.json_response({"kind": "Node", "metadata": {"name": "n1"}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}"
    # The API server's address is the proxy itself when no proxy is set, so both
    # cases answer; only the proxied request names the API server in its target.
    info = kopf.ConnectionInfo(
        server="http://api.invalid:6443" if proxy_url else url,
        proxy_url=url if proxy_url else None,
    )
    kube = Kube(lambda: info)
    try:
        node = await kube.get_node("n1")
        assert node is not None and node["metadata"]["name"] == "n1"
    finally:
        await kube.close()
        await runner.cleanup()
    return seen


def test_requests_go_through_the_kubeconfigs_proxy() -> None:
    assert asyncio.run(_through("set")) == ["http://api.invalid:6443/api/v1/nodes/n1"]


def test_without_a_proxy_requests_go_straight_to_the_server() -> None:
    (target,) = asyncio.run(_through(None))
    assert target.endswith("/api/v1/nodes/n1")
    assert "api.invalid" not in target
