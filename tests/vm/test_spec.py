"""A service's VM from its image manifest, zone declaration and server flags
(summoner.vm.spec), on the shipped manifests as ``load_manifest`` reads them."""

from __future__ import annotations

import dataclasses

from summoner.images import load_manifest
from summoner.vm.config import OnDemandConfig
from summoner.vm.spec import build_spec
from tests.conftest import ROOT
from tests.vm.fakes import host

HELLO = ROOT / "images" / "hello" / "image.toml"


def test_the_shipped_manifest_gives_its_values():
    manifest = load_manifest(HELLO)
    spec = build_spec(host("hello", "127.0.0.5", "hello"), manifest, OnDemandConfig())
    assert spec.kernel == manifest.boot.kernel and spec.kernel.is_absolute()
    assert spec.initrd == manifest.boot.initrd and spec.boot_kind == "kernel"
    assert (spec.memory_mib, spec.vcpus, spec.port) == (manifest.resources.memory_mib, manifest.resources.vcpus,
                                                        manifest.service.port)
    assert spec.probe_interval == manifest.probe.interval_ms / 1000
    assert spec.boot_timeout == manifest.probe.boot_timeout_s
    assert (spec.idle_timeout, spec.stop_mode) == (manifest.reap.idle_timeout_s, manifest.reap.stop_mode)
    assert spec.domain_name == "summoner-hello.example.org" and spec.address == "127.0.0.5"


def test_zone_beats_flag_beats_image():
    manifest = load_manifest(HELLO)
    flags = OnDemandConfig(boot_timeout=33.0, idle_timeout=44.0, stop_mode="suspend")
    by_flag = build_spec(host("hello", "127.0.0.5", "hello"), manifest, flags)
    assert (by_flag.boot_timeout, by_flag.idle_timeout, by_flag.stop_mode) == (33.0, 44.0, "suspend")
    by_zone = build_spec(host("hello", "127.0.0.5", "hello", boot_timeout=7.0, idle=0.0, stop="shutdown",
                              memory_mib=96, port=9000, probe_path="/health"), manifest, flags)
    assert (by_zone.boot_timeout, by_zone.idle_timeout, by_zone.stop_mode) == (7.0, 0.0, "shutdown")
    assert (by_zone.memory_mib, by_zone.port, by_zone.probe_path) == (96, 9000, "/health")


def test_the_machine_flag_applies_to_images_that_name_none():
    manifest = load_manifest(HELLO)
    unnamed = dataclasses.replace(manifest, boot=dataclasses.replace(manifest.boot, machine=None))
    assert build_spec(host("hello", "127.0.0.5", "hello"), unnamed, OnDemandConfig(machine="q35")).machine == "q35"
    assert build_spec(host("hello", "127.0.0.5", "hello"), manifest, OnDemandConfig(machine="q35")).machine == "pc"


def test_what_changes_the_vm_changes_its_config_hash():
    manifest = load_manifest(HELLO)
    base = build_spec(host("hello", "127.0.0.5", "hello"), manifest, OnDemandConfig()).config_hash
    assert build_spec(host("hello", "127.0.0.5", "hello", memory_mib=128), manifest,
                      OnDemandConfig()).config_hash != base
    assert build_spec(host("hello", "127.0.0.5", "hello"), manifest,
                      OnDemandConfig(network="bridge")).config_hash != base
    # reaping settings do not need a new VM
    assert build_spec(host("hello", "127.0.0.5", "hello", idle=5.0), manifest, OnDemandConfig()).config_hash == base


def test_a_bridge_guest_gets_the_ipv6_address_and_a_new_one_is_a_new_vm():
    manifest = load_manifest(HELLO)
    assert manifest.network.ipv6_config == "kernel-cmdline"
    bridge = OnDemandConfig(network="bridge")
    v4 = build_spec(host("hello", "192.0.2.5", "hello"), manifest, bridge)
    dual = build_spec(host("hello", "192.0.2.5", "hello", address6="2001:db8::5"), manifest, bridge)
    assert (v4.address6, dual.address6) == (None, "2001:db8::5")
    assert dual.config_hash != v4.config_hash
    moved = build_spec(host("hello", "192.0.2.5", "hello", address6="2001:db8::6"), manifest, bridge)
    assert moved.config_hash != dual.config_hash
    other_prefix = build_spec(host("hello", "192.0.2.5", "hello", address6="2001:db8::5"), manifest,
                              dataclasses.replace(bridge, bridge_ipv6_prefix=56))
    assert other_prefix.config_hash != dual.config_hash


def test_snapshot_boot_comes_from_the_image_unless_the_server_turns_it_off():
    manifest = load_manifest(HELLO)
    assert manifest.boot.snapshot_boot  # the shipped hello cold-starts from its golden snapshot
    assert build_spec(host("hello", "127.0.0.5", "hello"), manifest, OnDemandConfig()).snapshot_boot
    assert not build_spec(host("hello", "127.0.0.5", "hello"), manifest,
                          OnDemandConfig(snapshot_boot=False)).snapshot_boot
