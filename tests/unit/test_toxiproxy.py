"""The Toxiproxy client's requests and answers, the broker's proxied listener, and the
workers' database address behind the proxy: the pieces that need no running proxy."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.native_kafka import NativeKafka, SaslCredentials
from devstack.toxiproxy import Proxy, Toxic, ToxiproxyClient, bandwidth, latency, timeout
from faults.network import through


def test_each_toxic_is_sent_as_the_api_takes_it_named_by_type_and_stream() -> None:
    assert latency(200, stream="upstream").body() == {
        "name": "latency_upstream",
        "type": "latency",
        "stream": "upstream",
        "toxicity": 1.0,
        "attributes": {"latency": 200, "jitter": 0},
    }
    assert bandwidth(64).body()["attributes"] == {"rate": 64}
    assert timeout(0).body()["attributes"] == {"timeout": 0}
    # Both directions of one link can carry a toxic of the same type side by side.
    assert latency(5, stream="upstream").key != latency(5, stream="downstream").key


def test_a_toxic_that_the_api_would_refuse_or_misread_is_refused_here() -> None:
    with pytest.raises(ValueError, match="stream"):
        Toxic("latency", {"latency": 1}, "sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        latency(-1)
    with pytest.raises(ValueError, match="probability"):
        Toxic("latency", {"latency": 1}, toxicity=1.5)
    with pytest.raises(ValueError, match="cut"):
        bandwidth(0)


def test_a_proxy_is_read_from_the_api_with_its_toxics_and_listen_address() -> None:
    proxy = Proxy.from_api(
        {
            "name": "postgres",
            "listen": "127.0.0.1:40123",
            "upstream": "127.0.0.1:5432",
            "enabled": False,
            "toxics": [
                {
                    "name": "latency_downstream",
                    "type": "latency",
                    "stream": "downstream",
                    "toxicity": 1,
                    "attributes": {"latency": 200, "jitter": 0},
                }
            ],
        }
    )
    assert (proxy.host, proxy.port, proxy.address) == ("127.0.0.1", 40123, "127.0.0.1:40123")
    assert not proxy.enabled
    assert [toxic.body() for toxic in proxy.toxics] == [latency(200).body()]


async def test_a_proxy_to_or_from_anywhere_but_loopback_is_refused_before_any_request() -> None:
    # Nothing listens at this URL: the refusal must come before a request is tried.
    client = ToxiproxyClient("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="loopback"):
        await client.create_proxy("out", listen="127.0.0.1:0", upstream="192.0.2.1:5432")
    with pytest.raises(ValueError, match="loopback"):
        await client.create_proxy("in", listen="0.0.0.0:0", upstream="127.0.0.1:5432")
    await client.close()


def test_the_workers_database_url_names_the_proxy_and_keeps_the_rest() -> None:
    url = "postgresql://postgres@127.0.0.1:5432/faults_x?application_name=w0"
    assert through(url, "127.0.0.1:40123") == (
        "postgresql://postgres@127.0.0.1:40123/faults_x?application_name=w0"
    )
    assert through("postgresql://127.0.0.1:5432/db", "127.0.0.1:1") == (
        "postgresql://127.0.0.1:1/db"
    )


def _properties(home: Path, *, proxy_listener: bool) -> dict[str, str]:
    kafka = NativeKafka(home, proxy_listener=proxy_listener)
    kafka._write_properties(kafka._ports(allocate=True), SaslCredentials("u", "p"))
    lines = kafka.properties_file.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


def test_the_proxied_listener_advertises_the_proxy_port_not_its_own(tmp_path: Path) -> None:
    properties = _properties(tmp_path, proxy_listener=True)
    listener, advertised = NativeKafka(tmp_path, proxy_listener=True).proxy_ports()
    assert listener != advertised
    assert f"PROXIED://127.0.0.1:{listener}" in properties["listeners"].split(",")
    assert f"PROXIED://127.0.0.1:{advertised}" in properties["advertised.listeners"].split(",")
    assert "PROXIED:PLAINTEXT" in properties["listener.security.protocol.map"].split(",")
    assert NativeKafka(tmp_path, proxy_listener=True).listens_for_proxy()


def test_a_broker_not_asked_for_it_has_no_proxied_listener(tmp_path: Path) -> None:
    properties = _properties(tmp_path, proxy_listener=False)
    assert "PROXIED" not in properties["listeners"] + properties["advertised.listeners"]
    assert not NativeKafka(tmp_path).listens_for_proxy()
