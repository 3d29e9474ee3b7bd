"""Build the Dockerfile with podman on a debootstrapped Debian base, export the
image's filesystem and run its programs under chroot (this machine can build
images but not run containers).

The debootstrap base is cached in $SEALEDNOTES_DRILL_CACHE
(/var/cache/sealednotes-drills): a tarball made once, imported into podman's
storage when the image is missing there, and a thin layer on top that adds this
machine's CA bundle (pip inside the build reaches PyPI through it). A fresh
machine builds everything from scratch (about a minute)."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.drills.common import need, run

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SEALEDNOTES_DRILL_CACHE", "/var/cache/sealednotes-drills"))
SUITE = "bookworm"
PACKAGES = "python3,python3-venv,python-is-python3,passwd,ca-certificates"
RAW_BASE = f"localhost/sealednotes-drill-debootstrap:{SUITE}"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
DEBIAN_MIRROR = os.environ.get("SEALEDNOTES_DRILL_MIRROR", "http://deb.debian.org/debian")


def podman(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return run([need("podman"), *args], timeout=timeout)


def image_exists(name: str) -> bool:
    return run([need("podman"), "image", "exists", name], check=False).returncode == 0


def _debootstrap_tarball() -> Path:
    tarball = CACHE / f"debootstrap-{SUITE}-minbase.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE))
    try:
        run(
            [
                need("debootstrap", "/usr/sbin/debootstrap"),
                "--variant=minbase",
                f"--include={PACKAGES}",
                SUITE,
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            timeout=1200,
        )
        for leftover in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            leftover.unlink()
        partial = tarball.with_suffix(".tar.partial")
        run(["tar", "-C", str(rootfs), "-cf", str(partial), "."])
        partial.rename(tarball)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return tarball


def ensure_base_image() -> str:
    """The base image name: the cached debootstrap plus this machine's CA bundle."""
    ca_digest = hashlib.sha256(HOST_CA.read_bytes()).hexdigest()[:12]
    name = f"localhost/sealednotes-drill-base:{SUITE}-ca{ca_digest}"
    if image_exists(name):
        return name
    if not image_exists(RAW_BASE):
        podman("import", str(_debootstrap_tarball()), RAW_BASE)
    with tempfile.TemporaryDirectory(prefix="sealednotes-ca-") as ctx:
        shutil.copy(HOST_CA, Path(ctx) / "ca-certificates.crt")
        (Path(ctx) / "Containerfile").write_text(
            f"FROM {RAW_BASE}\nCOPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n"
        )
        podman("build", "--isolation", "chroot", "--format", "docker", "-t", name, ctx)
    return name


def build(
    tag: str, context: Path, base: str, dockerfile: Path | None = None, no_cache: bool = True
) -> float:
    """podman build (chroot isolation, host network); returns the seconds taken."""
    args = ["build", "--isolation", "chroot", "--format", "docker", "--pull=never"]
    args.append("--layers=false")  # no per-step images left behind
    if no_cache:
        args.append("--no-cache")
    args += ["--build-arg", f"BASE_IMAGE={base}", "-t", tag]
    if dockerfile is not None:
        args += ["-f", str(dockerfile)]
    started = time.monotonic()
    podman(*args, str(context), timeout=1500)
    return time.monotonic() - started


@dataclass
class ImageConfig:
    env: dict[str, str]
    user: str
    workdir: str
    cmd: list[str] = field(default_factory=list)


def inspect(tag: str) -> ImageConfig:
    data = json.loads(podman("image", "inspect", tag).stdout)[0]
    cfg = data.get("Config") or {}
    env = dict(item.split("=", 1) for item in cfg.get("Env") or [])
    return ImageConfig(
        env=env,
        user=cfg.get("User") or "0:0",
        workdir=cfg.get("WorkingDir") or "/",
        cmd=list(cfg.get("Cmd") or []),
    )


def export(tag: str, dest: Path) -> Path:
    """The image's filesystem, unpacked into dest (as podman create + export would ship it)."""
    dest.mkdir(parents=True, exist_ok=True)
    name = f"sealednotes-export-{os.getpid()}-{time.monotonic_ns()}"
    podman("create", "--name", name, tag, "/bin/true")  # never started: export only
    try:
        archive = dest.with_suffix(".tar")
        podman("export", "-o", str(archive), name)
        run(["tar", "-C", str(dest), "--numeric-owner", "-xpf", str(archive)])
        archive.unlink()
    finally:
        run([need("podman"), "rm", "-f", name], check=False)
    return dest


def remove_image(tag: str) -> None:
    """Remove the image and the unnamed build-stage images a build leaves behind
    (podman storage on the drill machines holds only the drills' images)."""
    run([need("podman"), "rmi", "-f", tag], check=False)
    run([need("podman"), "image", "prune", "-f"], check=False)


def chroot_command(
    root: Path, config: ImageConfig, argv: list[str], env: dict[str, str], user: str | None = None
) -> list[str]:
    """A command line that runs argv inside the exported image as the container
    would: its own mount namespace (proc, dev, a tmpfs /tmp, all gone when the
    process exits), the image's user, working directory and environment, and the
    host's network (chroot has no network isolation)."""
    full_env = {**config.env, **env}
    env_args = " ".join(shlex.quote(f"{k}={v}") for k, v in full_env.items())
    r = shlex.quote(str(root))
    script = (
        f"mount -t proc proc {r}/proc && mount --rbind /dev {r}/dev"
        f" && mount -t tmpfs -o mode=1777,size=64m tmpfs {r}/tmp"
        f" && exec chroot --userspec={shlex.quote(user or config.user)} {r}"
        f" /usr/bin/env -i {env_args}"
        f" sh -c 'cd {shlex.quote(config.workdir)} && exec \"$@\"' image"
        f" {' '.join(shlex.quote(a) for a in argv)}"
    )
    return [need("unshare"), "--mount", "--propagation", "private", "--fork", "sh", "-c", script]
