import ipaddress
from datetime import timedelta

import pytest
import time_machine

from agentpost.events import services, targets
from agentpost.events.models import Delivery, WebhookEndpoint
from tests.conftest import CURRENT_TIME
from tests.events.conftest import Reply

REFUSED = [
    # IPv4
    (
        "127.0.0.1",
        "a loopback address (allowed only with WEBHOOKS_ALLOW_PRIVATE_TARGETS=true)",
    ),
    (
        "127.255.0.9",
        "a loopback address (allowed only with WEBHOOKS_ALLOW_PRIVATE_TARGETS=true)",
    ),
    ("10.1.2.3", "a private address"),
    ("172.16.0.1", "a private address"),
    ("192.168.1.1", "a private address"),
    ("169.254.169.254", "a cloud metadata address"),
    ("169.254.170.2", "a cloud metadata address"),
    ("169.254.1.1", "a link-local address"),
    ("100.64.0.1", "a carrier-grade NAT address"),
    ("100.127.255.254", "a carrier-grade NAT address"),
    ("100.100.100.200", "a cloud metadata address"),
    ("192.0.0.192", "a cloud metadata address"),
    ("224.0.0.1", "a multicast address"),
    ("224.0.1.1", "a multicast address"),
    ("239.255.255.250", "a multicast address"),
    ("0.0.0.0", "an unspecified address"),
    ("240.0.0.1", "a private address"),
    ("255.255.255.255", "a private address"),
    ("192.0.2.1", "a private address"),
    ("198.18.0.1", "a private address"),
    # IPv6
    (
        "::1",
        "a loopback address (allowed only with WEBHOOKS_ALLOW_PRIVATE_TARGETS=true)",
    ),
    ("::", "an unspecified address"),
    ("fe80::1", "a link-local address"),
    ("fc00::1", "a private address"),
    ("fd12:3456::1", "a private address"),
    ("ff02::1", "a multicast address"),
    ("ff0e::1", "a multicast address"),
    ("fd00:ec2::254", "a cloud metadata address"),
    ("2001:db8::1", "a private address"),
    # IPv6 that carries IPv4: mapped, NAT64 and 6to4
    (
        "::ffff:127.0.0.1",
        "a loopback address (allowed only with WEBHOOKS_ALLOW_PRIVATE_TARGETS=true)",
    ),
    ("::ffff:10.0.0.1", "a private address"),
    ("::ffff:169.254.169.254", "a cloud metadata address"),
    ("::ffff:100.64.0.1", "a carrier-grade NAT address"),
    ("64:ff9b::a9fe:a9fe", "a cloud metadata address"),
    (
        "64:ff9b::7f00:1",
        "a loopback address (allowed only with WEBHOOKS_ALLOW_PRIVATE_TARGETS=true)",
    ),
    ("2002:c0a8:101::1", "a private address"),
    (
        "2002:7f00:1::",
        "a loopback address (allowed only with WEBHOOKS_ALLOW_PRIVATE_TARGETS=true)",
    ),
]


@pytest.mark.parametrize("address,reason", REFUSED)
def test_it_refuses_non_public_addresses(address, reason):
    ip = ipaddress.ip_address(address)
    assert targets.refusal_reason(ip, allow_loopback=False) == reason


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "2a00:1450::1"]
)
def test_it_allows_public_addresses(address):
    ip = ipaddress.ip_address(address)
    assert targets.refusal_reason(ip, allow_loopback=False) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
def test_the_setting_allows_loopback(address):
    ip = ipaddress.ip_address(address)
    assert targets.refusal_reason(ip, allow_loopback=True) is None


@pytest.mark.parametrize(
    "address", ["10.0.0.1", "169.254.169.254", "fd00:ec2::254", "100.64.0.1", "::"]
)
def test_the_setting_allows_nothing_but_loopback(address):
    ip = ipaddress.ip_address(address)
    assert targets.refusal_reason(ip, allow_loopback=True) is not None


@pytest.mark.parametrize(
    "url,message",
    [
        ("ftp://hooks.example.com/", "must start with https:// or http://"),
        ("file:///etc/passwd", "must start with https:// or http://"),
        ("javascript:alert(1)", "must start with https:// or http://"),
        ("https://user:pw@hooks.example.com/", "user name or password"),
        ("https://user@hooks.example.com/", "user name or password"),
        ("https:///path", "no host"),
        ("https://hooks.example.com:99999/", "not valid"),
        ("https://hooks.example.com/a b", "spaces or control characters"),
        ("https://hooks.example.com/\r\nX: y", "spaces or control characters"),
        ("https://hooks.example.com/" + "a" * 2048, "longer than 2048"),
    ],
)
def test_it_refuses_urls_that_are_never_targets(url, message):
    with pytest.raises(targets.UnsafeTarget, match=message):
        targets.check_url(url)


def test_a_name_is_checked_by_what_it_resolves_to(dns):
    dns.names["hooks.example.com"] = ["93.184.216.34"]
    dns.names["internal.example.com"] = ["10.0.0.7"]
    dns.names["metadata.example.com"] = ["::ffff:169.254.169.254"]
    assert targets.check_url("https://hooks.example.com/x").host == "hooks.example.com"
    with pytest.raises(targets.UnsafeTarget, match="10.0.0.7, a private address"):
        targets.check_url("https://internal.example.com/")
    with pytest.raises(targets.UnsafeTarget, match="cloud metadata"):
        targets.check_url("https://metadata.example.com/")


def test_one_refused_address_among_many_refuses_the_name(dns):
    dns.names["mixed.example.com"] = ["93.184.216.34", "2606:4700::1", "127.0.0.1"]
    with pytest.raises(targets.UnsafeTarget, match="127.0.0.1, a loopback address"):
        targets.check_url("https://mixed.example.com/")


def test_a_name_that_does_not_resolve_is_refused(dns):
    with pytest.raises(targets.UnsafeTarget, match="does not resolve"):
        targets.check_url("https://nowhere.example.com/")


def test_an_ip_literal_is_checked_without_a_lookup(dns):
    with pytest.raises(targets.UnsafeTarget, match="a private address"):
        targets.check_url("http://[fd00::1]:8080/")
    with pytest.raises(targets.UnsafeTarget, match="a loopback address"):
        targets.check_url("http://127.0.0.1:8080/")
    assert dns.lookups == []


def test_creation_refuses_a_url_on_a_private_network(api, dns):
    dns.names["intranet.example.com"] = ["192.168.10.20"]
    response = api.post("/webhooks", {"url": "https://intranet.example.com/hook"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert "192.168.10.20, a private address" in error["fields"]["url"][0]
    assert not WebhookEndpoint.objects.exists()


def test_creation_refuses_loopback_unless_allowed(api, receiver, settings):
    response = api.post("/webhooks", {"url": receiver.url()})
    assert response.status_code == 400
    assert "loopback" in response.json()["error"]["message"]

    settings.WEBHOOKS_ALLOW_PRIVATE_TARGETS = True
    assert api.post("/webhooks", {"url": receiver.url()}).status_code == 201


def test_a_name_that_moves_to_a_private_address_is_refused_at_delivery(api, org, dns):
    dns.names["hooks.example.com"] = ["93.184.216.34"]
    response = api.post("/webhooks", {"url": "https://hooks.example.com/in"})
    assert response.status_code == 201

    # DNS now points the name at the metadata service. Nothing is connected to
    # (the dns fixture fails any test that connects beyond loopback).
    dns.names["hooks.example.com"] = ["169.254.169.254"]
    services.emit_event(org=org, type="message.sent", data={}, now=CURRENT_TIME)
    delivery = Delivery.objects.get()
    assert services.deliver(delivery_id=delivery.id, now=CURRENT_TIME) == "pending"
    attempt = delivery.attempts.get()
    assert attempt.status_code is None
    assert attempt.error.startswith("refused: ")
    assert "169.254.169.254, a cloud metadata address" in attempt.error


def test_delivery_connects_to_the_address_it_checked(api, org, dns, receiver, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE_TARGETS = True
    dns.names["hooks.example.test"] = ["127.0.0.1"]
    url = f"http://hooks.example.test:{receiver.port}/in?token=abc"
    with time_machine.travel(CURRENT_TIME, tick=False):
        response = api.post("/webhooks", {"url": url})
        receiver.secrets.append(response.json()["secret"])
        services.emit_event(org=org, type="message.sent", data={}, now=CURRENT_TIME)
        dns.lookups.clear()
        delivery = Delivery.objects.get()
        assert services.deliver(delivery_id=delivery.id, now=CURRENT_TIME) == (
            "succeeded"
        )

    # One lookup, checked, then used: no second answer could be connected to.
    assert dns.lookups == ["hooks.example.test"]
    [got] = receiver.requests
    assert got.headers["host"] == f"hooks.example.test:{receiver.port}"
    assert got.path == "/in?token=abc"
    assert got.verified is not None


def test_a_retry_checks_the_name_again(api, org, dns, receiver, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE_TARGETS = True
    dns.names["hooks.example.test"] = ["127.0.0.1"]
    api.post("/webhooks", {"url": f"http://hooks.example.test:{receiver.port}/"})
    receiver.reply(Reply(500))
    services.emit_event(org=org, type="message.sent", data={}, now=CURRENT_TIME)
    delivery = Delivery.objects.get()
    services.deliver(delivery_id=delivery.id, now=CURRENT_TIME)

    dns.names["hooks.example.test"] = ["10.9.8.7"]
    later = CURRENT_TIME + timedelta(minutes=1)
    assert services.deliver(delivery_id=delivery.id, now=later) == "pending"
    assert len(receiver.requests) == 1
    assert "10.9.8.7, a private address" in delivery.attempts.last().error
