"""Guest image manifests (``images/<name>/image.toml``) and their build recipe.

A manifest says how to boot one guest (kernel + initrd, or a disk), how big it
is, which port it serves, how to tell that it is ready, and when to reap it.
Everything else in summoner works from the frozen :class:`ImageManifest`
built here, so validation is strict and happens once, at load time, with
messages that name the file and the key (``images/hello/image.toml:
boot.kernel: ...``): a typo in a manifest must fail ``summoner check``, not a
DNS query at 3 a.m.

The modes every layer shares (``STOP_MODES``) are defined here, the lowest
module that needs them; the on-demand part imports them.

Tests: tests/test_images.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import re
import subprocess
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType
from typing import Any, TypeVar, overload

log = logging.getLogger(__name__)

MANIFEST_NAME = "image.toml"
BOOT_KINDS = ("kernel", "disk")
DISK_FORMATS = ("qcow2", "raw")
MACHINES = ("pc", "q35", "microvm")
ARCHES = ("x86_64", "aarch64")
# The QEMU machine types summoner boots each architecture on (first: default).
MACHINES_BY_ARCH = {"x86_64": MACHINES, "aarch64": ("virt",)}


def host_arch() -> str:
    """This host's architecture in manifest terms (``uname -m``; arm64 is aarch64)."""
    machine = platform.machine()
    return "aarch64" if machine in ("arm64", "aarch64") else machine


def kernel_arch(path: Path) -> str | None:
    """The architecture a kernel file is built for, from its header: an ELF's
    e_machine, the arm64 Image magic, or the x86 bzImage signature; None for
    anything else (or a file that cannot be read)."""
    try:
        with open(path, "rb") as f:
            head = f.read(0x210)
    except OSError:
        return None
    if head[:4] == b"\x7fELF" and len(head) >= 20:
        e_machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
        return {62: "x86_64", 183: "aarch64"}.get(e_machine, f"ELF machine {e_machine}")
    if head[0x38:0x3C] == b"ARM\x64":
        return "aarch64"
    if head[0x202:0x206] == b"HdrS":
        return "x86_64"
    return None
IP_CONFIGS = ("kernel-cmdline", "dhcp")
IPV6_CONFIGS = ("none", "kernel-cmdline")
STOP_MODES = ("destroy", "shutdown", "suspend", "snapshot")
# Image names become DNS labels and libvirt domain names: one lower-case label.
_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")

T = TypeVar("T")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names file and key."""


class ImageBuildError(RuntimeError):
    """The build recipe failed or the image is unknown."""


@dataclass(frozen=True, slots=True)
class BootSpec:
    kind: str  # "kernel" | "disk"
    arch: str = "x86_64"  # the guest's architecture (ARCHES)
    machine: str | None = None  # None: the server's --machine (default pc)
    # Cold starts restore a snapshot taken right after the first boot's probe
    # succeeded (a "golden" snapshot) instead of booting.
    snapshot_boot: bool = False
    kernel: Path | None = None
    initrd: Path | None = None
    # Without the ip= part: summoner appends the network settings per VM.
    cmdline: str = ""
    disk: Path | None = None
    format: str | None = None
    firmware: Path | None = None


@dataclass(frozen=True, slots=True)
class Resources:
    memory_mib: int = 64
    vcpus: int = 1


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    port: int


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    # HTTP only, deliberately: with QEMU user networking the host side of a
    # hostfwd port accepts connections before the guest is even booted, so a
    # bare TCP connect proves nothing.
    path: str = "/"
    expect_status: int = 200
    interval_ms: int = 20
    boot_timeout_s: float = 10.0
    request_timeout_ms: int = 500


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    ip_config: str = "kernel-cmdline"
    # "kernel-cmdline": the guest adds the address of summoner_ip6= itself
    # (images/common/net6.c) before it serves; "none": IPv4 only
    ipv6_config: str = "none"


@dataclass(frozen=True, slots=True)
class ReapSpec:
    idle_timeout_s: float = 300.0
    stop_mode: str = "destroy"
    shutdown_grace_s: float = 5.0


@dataclass(frozen=True, slots=True)
class BuildSpec:
    recipe: str | None = None


@dataclass(frozen=True, slots=True)
class ImageManifest:
    name: str
    description: str
    path: Path  # the manifest file, absolute
    boot: BootSpec
    resources: Resources
    service: ServiceSpec
    probe: ProbeSpec
    network: NetworkSpec
    reap: ReapSpec
    build: BuildSpec
    # The parsed TOML in canonical form, so the hash ignores comments/layout.
    canonical: str = field(repr=False, compare=False)

    @property
    def directory(self) -> Path:
        return self.path.parent

    def artifacts(self) -> list[Path]:
        """Files the VM boots from, in a fixed order."""
        b = self.boot
        return [p for p in (b.kernel, b.initrd, b.disk, b.firmware) if p is not None]

    def missing_artifacts(self) -> list[Path]:
        return [p for p in self.artifacts() if not p.is_file()]

    def config_hash(self) -> str:
        """Identity of "this manifest with these built files".

        Summoner records it with each VM so that after a rebuild (or a manifest
        edit) a still-running guest from the old build can be recognised and
        replaced.  Size + mtime rather than content hashes: the kernel is 15 MB
        and this is called on hot paths; builds always rewrite the files.
        """
        h = hashlib.sha256()
        h.update(self.canonical.encode())
        for artifact in self.artifacts():
            try:
                st = artifact.stat()
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            h.update(f"\0{artifact}\0{stamp}".encode())
        return h.hexdigest()


# ---- loading --------------------------------------------------------------------


class _Table:
    """One TOML table being validated: typed getters that know the key path,
    and a check that nothing unknown (a typo) is left over."""

    def __init__(self, source: str, prefix: str, data: dict[str, Any]) -> None:
        self.source, self.prefix, self.data = source, prefix, data
        self.used: set[str] = set()

    def error(self, key: str, message: str) -> ManifestError:
        return ManifestError(f"{self.source}: {self.prefix}{key}: {message}")

    @overload
    def get(self, key: str, kind: type[T] | tuple[type[T], ...], default: T | EllipsisType = ..., *,
            check: Callable[[T], str | None] | None = None) -> T: ...

    @overload
    def get(self, key: str, kind: type[T] | tuple[type[T], ...], default: None, *,
            check: Callable[[T], str | None] | None = None) -> T | None: ...

    def get(self, key: str, kind: type[T] | tuple[type[T], ...], default: T | EllipsisType | None = ..., *,
            check: Callable[[T], str | None] | None = None) -> T | None:
        """``key``'s value, of type ``kind`` and passing ``check``; ``default``
        when it is missing (``...``: required)."""
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise self.error(key, "required key is missing")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is a subclass of int in Python; `port = true` must not pass as 1.
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise self.error(key, f"expected {names}, got {type(value).__name__} {value!r}")
        if check is not None and (problem := check(value)) is not None:
            raise self.error(key, problem)
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str | EllipsisType = ...) -> str:
        return self.get(key, str, default,
                        check=lambda v: None if v in choices else f"must be one of {', '.join(choices)}; got {v!r}")

    def path(self, key: str, base: Path, required: bool) -> Path | None:
        value = self.get(key, str, ... if required else None,
                         check=lambda v: "must not be empty" if not v.strip() else None)
        return None if value is None else (base / value).resolve()

    def forbid(self, keys: tuple[str, ...], why: str) -> None:
        for key in keys:
            if key in self.data:
                raise self.error(key, why)

    def finish(self) -> None:
        for key in sorted(set(self.data) - self.used):
            raise self.error(key, "unknown key (typo?)")


def _table(source: str, doc: dict[str, Any], name: str) -> _Table:
    data = doc.get(name, {})
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: {name}: expected a table, got {type(data).__name__}")
    return _Table(source, f"{name}.", data)


def _range(lo: float, hi: float) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be between {lo} and {hi}; got {v}"


def _positive(v: float) -> str | None:
    return None if v > 0 else f"must be positive; got {v}"


def load_manifest(path: str | Path) -> ImageManifest:
    """Parse and validate one manifest; paths in it become absolute."""
    path = Path(path)
    source = str(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{source}: invalid TOML: {exc}") from exc
    base = path.resolve().parent

    top = _Table(source, "", doc)
    name = top.get("name", str, check=lambda v: None if _NAME_RE.match(v) else
                   "must be one DNS label: a-z, 0-9 and inner '-', at most 63 characters")
    description = top.get("description", str, "")
    tables = ("boot", "resources", "service", "probe", "network", "reap", "build")
    top.used.update(tables)
    top.finish()

    t = _table(source, doc, "boot")
    kind = t.choice("kind", BOOT_KINDS)
    arch = t.choice("arch", ARCHES, host_arch() if host_arch() in ARCHES else "x86_64")
    # None: the server's --machine decides (x86_64), virt (aarch64)
    machine = t.choice("machine", MACHINES_BY_ARCH[arch]) if "machine" in t.data else None
    if arch != "x86_64" and machine is None:
        machine = MACHINES_BY_ARCH[arch][0]
    if kind == "kernel":
        t.forbid(("disk", "format"), 'only for kind = "disk"')
        boot = BootSpec(
            kind=kind,
            arch=arch,
            machine=machine,
            kernel=t.path("kernel", base, required=True),
            initrd=t.path("initrd", base, required=False),
            cmdline=t.get("cmdline", str, "console=ttyS0 quiet panic=-1", check=_no_ip_param),
            firmware=t.path("firmware", base, required=False),
            snapshot_boot=t.get("snapshot_boot", bool, False),
        )
    else:
        t.forbid(("kernel", "initrd", "cmdline"), 'only for kind = "kernel"')
        boot = BootSpec(
            kind=kind,
            arch=arch,
            machine=machine,
            disk=t.path("disk", base, required=True),
            format=t.choice("format", DISK_FORMATS),
            firmware=t.path("firmware", base, required=False),
            snapshot_boot=t.get("snapshot_boot", bool, False),
        )
    found = kernel_arch(boot.kernel) if boot.kernel is not None else None
    if found is not None and found != arch:
        # a built kernel of another architecture: QEMU would start and the guest never run
        raise t.error("arch", f"{arch!r}, but {boot.kernel} is an {found} kernel; set arch = {found!r} "
                              f"or point kernel at an {arch} build")
    t.finish()

    t = _table(source, doc, "resources")
    resources = Resources(
        memory_mib=t.get("memory_mib", int, 64, check=_range(16, 65536)),
        vcpus=t.get("vcpus", int, 1, check=_range(1, 64)),
    )
    t.finish()

    t = _table(source, doc, "service")
    service = ServiceSpec(port=t.get("port", int, check=_range(1, 65535)))
    t.finish()

    t = _table(source, doc, "probe")
    probe = ProbeSpec(
        path=t.get("path", str, "/", check=lambda v: None if v.startswith("/") and " " not in v
                   else "must start with '/' and contain no spaces"),
        expect_status=t.get("expect_status", int, 200, check=_range(100, 599)),
        interval_ms=t.get("interval_ms", int, 20, check=_range(1, 60_000)),
        boot_timeout_s=float(t.get("boot_timeout_s", (int, float), 10.0, check=_positive)),
        request_timeout_ms=t.get("request_timeout_ms", int, 500, check=_range(1, 60_000)),
    )
    t.finish()

    t = _table(source, doc, "network")
    network = NetworkSpec(ip_config=t.choice("ip_config", IP_CONFIGS, "kernel-cmdline" if kind == "kernel" else "dhcp"),
                          ipv6_config=t.choice("ipv6_config", IPV6_CONFIGS, "none"))
    if network.ip_config == "kernel-cmdline" and kind != "kernel":
        raise t.error("ip_config", '"kernel-cmdline" needs boot.kind = "kernel" (a disk image has no command line)')
    if network.ipv6_config == "kernel-cmdline" and kind != "kernel":
        raise t.error("ipv6_config", '"kernel-cmdline" needs boot.kind = "kernel" (a disk image has no command line)')
    t.finish()

    t = _table(source, doc, "reap")
    reap = ReapSpec(
        idle_timeout_s=float(t.get("idle_timeout_s", (int, float), 300.0, check=_positive)),
        stop_mode=t.choice("stop_mode", STOP_MODES, "destroy"),
        shutdown_grace_s=float(t.get("shutdown_grace_s", (int, float), 5.0,
                                     check=lambda v: None if v >= 0 else f"must not be negative; got {v}")),
    )
    t.finish()

    t = _table(source, doc, "build")
    build = BuildSpec(recipe=t.get("recipe", str, None))
    t.finish()

    return ImageManifest(
        name=name,
        description=description,
        path=path.resolve(),
        boot=boot,
        resources=resources,
        service=service,
        probe=probe,
        network=network,
        reap=reap,
        build=build,
        canonical=json.dumps(doc, sort_keys=True, default=str),
    )


def _no_ip_param(cmdline: str) -> str | None:
    # summoner appends ip= per VM; a second one in the manifest would win or
    # clash depending on order, so refuse it outright.
    if any(word.startswith(("ip=", "nfsaddrs=")) for word in cmdline.split()):
        return "must not contain ip= (summoner appends the network settings)"
    return None


def discover_images(images_dir: str | Path, errors: list[ManifestError] | None = None) -> dict[str, ImageManifest]:
    """All images in ``images_dir/*/image.toml``, by name.

    A broken manifest is logged (and appended to ``errors`` if given) and
    skipped, so one bad image cannot take the others offline.
    """
    found: dict[str, ImageManifest] = {}
    for manifest_path in sorted(Path(images_dir).glob(f"*/{MANIFEST_NAME}")):
        try:
            manifest = load_manifest(manifest_path)
            if manifest.name in found:
                raise ManifestError(f"{manifest_path}: name: {manifest.name!r} is already used by "
                                    f"{found[manifest.name].path}")
        except ManifestError as exc:
            log.warning("skipping image: %s", exc)
            if errors is not None:
                errors.append(exc)
            continue
        found[manifest.name] = manifest
    return found


# ---- building ---------------------------------------------------------------------

# Makefile targets that are not images of their own.
_EXTRA_TARGETS = ("all", "x86_64", "aarch64", "kernel", "kernel-arm64", "silent")


def build_for_arch(name: str, arch: str, images: Mapping[str, ImageManifest]) -> str | None:
    """The image that is ``name``'s build for ``arch``: ``name`` itself if it is
    built for it, else ``name-arch`` if that is; None when neither is."""
    for candidate in (name, f"{name}-{arch}"):
        manifest = images.get(candidate)
        if manifest is not None and manifest.boot.arch == arch:
            return candidate
    return None


def discover_in(images_dirs: Iterable[Path]) -> dict[str, ImageManifest]:
    """Images by name from every directory (the first directory wins a name)."""
    found: dict[str, ImageManifest] = {}
    for directory in images_dirs:
        for name, manifest in discover_images(directory).items():
            found.setdefault(name, manifest)
    return found


def build_image(name_or_all: str, images_dir: str | Path) -> None:
    """Build one image (or "all") with the recipe in ``images_dir/Makefile``.

    make's timestamps and the kernel script's input hash make this cheap when
    nothing changed, so callers may run it before every use.  make's output
    goes to our stdout/stderr: a first kernel build takes minutes and the
    operator should see it progress.
    """
    images_dir = Path(images_dir)
    if not (images_dir / "Makefile").is_file():
        raise ImageBuildError(f"{images_dir}/Makefile not found")
    target = "all" if name_or_all in ("all", "--all") else name_or_all
    known = set(discover_images(images_dir)) | set(_EXTRA_TARGETS)
    if target not in known:
        raise ImageBuildError(f"unknown image {target!r}; known: {', '.join(sorted(known))}")
    try:
        result = subprocess.run(["make", "-C", str(images_dir), target], check=False)
    except OSError as exc:  # make itself missing: say so, don't crash the CLI
        raise ImageBuildError(f"cannot run make: {exc}") from exc
    if result.returncode != 0:
        raise ImageBuildError(f"make -C {images_dir} {target} failed with exit status {result.returncode}")


if __name__ == "__main__":
    # Developer aid only; the real CLI is `summoner image ...`.
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    directory = Path(__file__).resolve().parent.parent / "images"
    if sys.argv[1:2] == ["build"] and len(sys.argv) == 3:
        build_image(sys.argv[2], directory)
    for image in discover_images(directory).values():
        missing = image.missing_artifacts()
        print(f"{image.name}: {image.boot.kind} {image.config_hash()[:12]}"
              f"{' missing ' + ', '.join(map(str, missing)) if missing else ''}")
