"""On-demand declarations in zone files: parsing, stripping, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from dnslib import QTYPE

from summoner.vm.hosts import split_on_demand
from summoner.zonefile import ZoneError, parse_zone_text
from tests.vm.fakes import manifest

HEAD = """$ORIGIN example.org.
$TTL 300
@ IN SOA ns1 hostmaster 1 3600 600 86400 60
  IN NS ns1
ns1 IN A 127.0.0.1
"""
IMAGES = {"hello": manifest("hello", ipv6=True), "tasks": manifest("tasks", ipv6=True),
          "ipv4only": manifest("ipv4only"), "hello-aarch64": manifest("hello-aarch64", arch="aarch64"),
          "armonly": manifest("armonly", arch="aarch64")}


def zone(body: str):
    return parse_zone_text(HEAD + body, "example.org", Path("example.org.zone"))


def test_declaration_is_split_out():
    z = zone('hello IN A 127.0.0.10\n'
             'hello IN MX 10 ns1\n'
             '_summoner.hello IN TXT "image=hello" "idle=120" "memory=96 vcpus=2" "stop=suspend"\n'
             'tasks IN A 127.0.0.11\n'
             '_summoner.tasks IN TXT "image=tasks" "ttl=5" "probe_path=/todo/api/v1.0/tasks" "boot_timeout=7.5"\n')
    zones, hosts = split_on_demand([z], IMAGES)
    by_name = {h.name: h for h in hosts}
    hello, tasks = by_name["hello.example.org"], by_name["tasks.example.org"]
    assert (hello.image, hello.address, hello.idle, hello.memory_mib, hello.vcpus, hello.stop) == \
        ("hello", "127.0.0.10", 120.0, 96, 2, "suspend")
    assert (tasks.ttl, tasks.probe_path, tasks.boot_timeout) == (5, "/todo/api/v1.0/tasks", 7.5)
    assert hello.location == "example.org.zone:8"
    assert [str(rr.rdata) for rr in hello.records_of(QTYPE.A)] == ["127.0.0.10"]
    assert hello.soa.rtype == QTYPE.SOA and hello.negative_ttl == 60
    records = zones[0].records
    assert "_summoner.hello.example.org" not in records
    assert [rr.rtype for rr in records["hello.example.org"]] == [QTYPE.MX]  # other types stay static
    assert "tasks.example.org" not in records
    assert "ns1.example.org" in records


def test_zone_without_declarations_is_untouched():
    z = zone("www IN A 127.0.0.2\n")
    zones, hosts = split_on_demand([z], IMAGES)
    assert hosts == [] and zones[0] is z


@pytest.mark.parametrize(("body", "message"), [
    ('_summoner.x IN TXT "image=hello"\n', "needs an A record"),
    ('x IN A 127.0.0.9\n_summoner.x IN TXT "idle=5"\n', "no image=NAME"),
    ('x IN A 127.0.0.9\n_summoner.x IN TXT "image=nope"\n', "unknown image 'nope'"),
    ('x IN A 127.0.0.9\n_summoner.x IN TXT "image=hello" "colour=blue"\n', "unknown key 'colour'"),
    ('x IN A 127.0.0.9\n_summoner.x IN TXT "image=hello" "memory=lots"\n', "memory='lots' must be an integer"),
    ('x IN A 127.0.0.9\n_summoner.x IN TXT "image=hello" "stop=explode"\n', "stop='explode' must be one of"),
    ('x IN A 127.0.0.9\n_summoner.x IN TXT "image=hello" "idle"\n', "expected key=value"),
    ('x IN A 127.0.0.9\n_summoner.x IN TXT "image=hello" "probe_path=health"\n', "must be an absolute path"),
    ('x IN A 192.0.2.1\n_summoner.x IN TXT "image=hello"\n', "not in 127.0.0.0/8"),
    ('x IN A 127.0.0.9\nx IN AAAA ::1\n_summoner.x IN TXT "image=hello"\n', "forwards IPv4 loopback only"),
    ('x IN A 127.0.0.9\nx IN A 127.0.0.8\n_summoner.x IN TXT "image=hello"\n', "2 A records"),
    ('x IN A 127.0.0.9\n_summoner.x IN TXT "image=hello"\ny IN A 127.0.0.9\n_summoner.y IN TXT "image=hello"\n',
     "already used by"),
])
def test_errors_point_at_the_line(body, message):
    with pytest.raises(ZoneError) as info:
        split_on_demand([zone(body)], IMAGES)
    problems = info.value.problems
    assert any(message in p for p in problems), problems
    assert all(p.startswith("example.org.zone:") for p in problems), problems


def test_bridge_mode_accepts_routable_addresses_and_aaaa():
    z = zone('x IN A 192.0.2.1\nx IN AAAA 2001:db8::1\n_summoner.x IN TXT "image=hello"\n')
    _zones, hosts = split_on_demand([z], IMAGES, network="bridge")
    assert hosts[0].address == "192.0.2.1"
    assert hosts[0].address6 == "2001:db8::1"
    assert len(hosts[0].records) == 2


def test_an_aaaa_needs_an_image_that_configures_ipv6():
    """Otherwise the AAAA would send dual-stack clients where nothing listens."""
    z = zone('x IN A 192.0.2.1\nx IN AAAA 2001:db8::1\n_summoner.x IN TXT "image=ipv4only"\n')
    with pytest.raises(ZoneError) as error:
        split_on_demand([z], IMAGES, network="bridge")
    [problem] = error.value.problems
    assert problem == ("example.org.zone:7: x.example.org has AAAA 2001:db8::1, but image 'ipv4only' does not "
                       'configure IPv6 ([network] ipv6_config is "none"), so nothing would listen there; remove '
                       'the AAAA or use an image with ipv6_config = "kernel-cmdline"')
    # without an AAAA the same image is fine
    z = zone('x IN A 192.0.2.1\n_summoner.x IN TXT "image=ipv4only"\n')
    assert split_on_demand([z], IMAGES, network="bridge")[1][0].address6 is None


def test_one_vm_has_one_ipv6_address():
    z = zone('x IN A 192.0.2.1\nx IN AAAA 2001:db8::1\nx IN AAAA 2001:db8::2\n_summoner.x IN TXT "image=hello"\n')
    with pytest.raises(ZoneError) as error:
        split_on_demand([z], IMAGES, network="bridge")
    assert "has 2 AAAA records; one VM has one address of each family" in error.value.problems[0]


def test_image_check_is_optional():
    z = zone('x IN A 127.0.0.9\n_summoner.x IN TXT "image=anything"\n')
    _zones, hosts = split_on_demand([z])
    assert hosts[0].image == "anything"


def test_shipped_example_zone():
    from summoner.zonefile import load_zone_dir
    zones = load_zone_dir(Path(__file__).resolve().parents[2] / "zones")
    _zones, hosts = split_on_demand(zones.zones.values(), IMAGES)
    assert {h.name: h.image for h in hosts} == {"hello.example.org": "hello", "tasks.example.org": "tasks"}


def test_arrowhead_keys_are_kept_for_the_publisher():
    z = zone('x IN A 127.0.0.9\n_summoner.x IN TXT "image=hello" "arrowhead-service=greeter" "meta.tier=demo"\n')
    _zones, hosts = split_on_demand([z], IMAGES)
    assert hosts[0].extra == {"arrowhead-service": "greeter", "meta.tier": "demo"}
    from summoner.arrowhead.publisher import published_services
    published = published_services(hosts, default_port=8080)
    assert [(p.service_definition, p.port, p.metadata) for p in published] == [("greeter", 8080, {"tier": "demo"})]


def test_every_problem_of_a_declaration_is_listed_exactly():
    z = zone('x IN A 127.0.0.9\n'
             '_summoner.x IN TXT "image=hello" "memory=lots" "idle=forever" "stop=explode" "image=tasks" "x"\n'
             'y IN A 127.0.0.9\n'
             '_summoner.y IN TXT "probe_path=health"\n')
    with pytest.raises(ZoneError) as info:
        split_on_demand([z], IMAGES)
    assert info.value.problems == [
        "example.org.zone:7: memory='lots' must be an integer in [16, 1048576]",
        "example.org.zone:7: idle='forever' must be a number of seconds in [0, 604800]",
        "example.org.zone:7: stop='explode' must be one of destroy, shutdown, suspend, snapshot",
        "example.org.zone:7: image given twice",
        "example.org.zone:7: expected key=value, got 'x'",
        # a declaration with a problem of its own is not also told it has no image
        "example.org.zone:9: probe_path='health' must be an absolute path without spaces",
    ]


def test_two_hosts_on_one_address_differ_by_port():
    z = zone('x IN A 127.0.0.9\n_summoner.x IN TXT "image=hello" "port=8080"\n'
             'y IN A 127.0.0.9\n_summoner.y IN TXT "image=hello" "port=8081"\n')
    _zones, hosts = split_on_demand([z], IMAGES)
    assert sorted((h.name, h.port) for h in hosts) == [("x.example.org", 8080), ("y.example.org", 8081)]


def images_of(z) -> dict[str, str]:
    return {h.name: h.image for h in split_on_demand([z], IMAGES, network="user")[1]}


def test_an_image_name_resolves_to_the_build_for_the_host_or_the_declared_arch():
    """image=NAME is the build for this host's architecture (NAME, or NAME-ARCH
    when NAME is another's); arch=ARCH picks that architecture's build."""
    z = zone('a IN A 127.0.0.9\n_summoner.a IN TXT "image=hello"\n'
             'b IN A 127.0.0.8\n_summoner.b IN TXT "image=hello" "arch=aarch64"\n'
             'c IN A 127.0.0.7\n_summoner.c IN TXT "image=hello-aarch64"\n'
             'd IN A 127.0.0.6\n_summoner.d IN TXT "image=armonly"\n')
    assert images_of(z) == {"a.example.org": "hello", "b.example.org": "hello-aarch64",
                            "c.example.org": "hello-aarch64", "d.example.org": "armonly"}


def test_an_arch_without_a_build_is_refused():
    z = zone('a IN A 127.0.0.9\n_summoner.a IN TXT "image=tasks" "arch=aarch64"\n'
             'b IN A 127.0.0.8\n_summoner.b IN TXT "image=hello" "arch=mips"\n')
    with pytest.raises(ZoneError) as error:
        split_on_demand([z], IMAGES)
    assert error.value.problems == [
        "example.org.zone:7: image 'tasks' has no aarch64 build: neither tasks nor tasks-aarch64 is an aarch64 "
        "image (build it: summoner image build tasks-aarch64)",
        "example.org.zone:9: arch=mips must be one of x86_64, aarch64"]


def test_kvm_for_a_guest_of_another_architecture_is_refused():
    z = zone('a IN A 127.0.0.9\n_summoner.a IN TXT "image=hello" "arch=aarch64"\n')
    with pytest.raises(ZoneError) as error:
        split_on_demand([z], IMAGES, virt_type="kvm")
    assert error.value.problems == [
        "example.org.zone:7: a.example.org: image hello-aarch64 is aarch64, this host is x86_64: KVM runs only "
        "guests of the host's architecture; use --virt-type auto or qemu (TCG)"]
    assert split_on_demand([z], IMAGES, virt_type="qemu")[1][0].image == "hello-aarch64"
