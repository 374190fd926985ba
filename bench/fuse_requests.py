#!/usr/bin/env python3
"""Counts the FUSE requests a workload makes, by opcode.

Runs a mount's daemon under strace (reads of /dev/fuse, first 8 bytes of each request: its
length and opcode), runs the workloads below against a fresh mount each, and prints requests
per operation. Used for the round-trip figures in bench/README.md; not part of `bench/run`.

    bench/fuse_requests.py [--bin target/release/sealfs] [--dir /dev/shm/sealfs-requests] [-n 1000]
"""

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

# include/uapi/linux/fuse.h
OPCODES = {
    1: "LOOKUP", 2: "FORGET", 3: "GETATTR", 4: "SETATTR", 5: "READLINK", 6: "SYMLINK",
    8: "MKNOD", 9: "MKDIR", 10: "UNLINK", 11: "RMDIR", 12: "RENAME", 13: "LINK", 14: "OPEN",
    15: "READ", 16: "WRITE", 17: "STATFS", 18: "RELEASE", 20: "FSYNC", 21: "SETXATTR",
    22: "GETXATTR", 23: "LISTXATTR", 24: "REMOVEXATTR", 25: "FLUSH", 26: "INIT",
    27: "OPENDIR", 28: "READDIR", 29: "RELEASEDIR", 30: "FSYNCDIR", 31: "GETLK", 32: "SETLK",
    33: "SETLKW", 34: "ACCESS", 35: "CREATE", 36: "INTERRUPT", 37: "BMAP", 38: "DESTROY",
    39: "IOCTL", 40: "POLL", 42: "BATCH_FORGET", 43: "FALLOCATE", 44: "READDIRPLUS",
    45: "RENAME2", 46: "LSEEK", 47: "COPY_FILE_RANGE",
}

# Asynchronous requests the caller never waits for.
ASYNC = {"FORGET", "BATCH_FORGET", "RELEASE", "RELEASEDIR"}


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


class Mount:
    def __init__(self, binary, work, name, extra=()):
        self.extra = list(extra)
        self.binary, self.cipher = binary, os.path.join(work, name + ".enc")
        self.key, self.path = os.path.join(work, name + ".key"), os.path.join(work, name)
        if not os.path.exists(self.cipher):
            subprocess.run([binary, "init", self.cipher, "--keyfile", self.key],
                           check=True, capture_output=True)
        os.makedirs(self.path, exist_ok=True)

    def __enter__(self):
        self.proc = subprocess.Popen(
            [self.binary, "mount", self.cipher, self.path, "--keyfile", self.key, "--foreground"]
            + self.extra,
            stderr=subprocess.DEVNULL)
        for _ in range(200):
            if os.path.ismount(self.path):
                return self
            time.sleep(0.05)
        raise RuntimeError("mount did not come up")

    def __exit__(self, *exc):
        subprocess.run(["umount", self.path], check=False)
        self.proc.wait(timeout=30)


def count(mount, workload):
    """Runs `workload()` with strace on the daemon; returns {opcode name: count}."""
    with tempfile.TemporaryDirectory(prefix="fuse-requests-") as out:
        # -ff: one file per thread, so a request's dump follows its read; -y names each fd.
        tracer = subprocess.Popen(
            ["strace", "-ff", "-qq", "-y", "-p", str(mount.proc.pid), "-e", "trace=read",
             "-e", "read=all", "-o", os.path.join(out, "t")], stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # strace attaches to every thread
        workload()
        time.sleep(0.5)  # asynchronous requests (release, forget)
        tracer.terminate()
        tracer.wait()
        counts = collections.Counter()
        for name in os.listdir(out):
            expect_dump = fuse_pending = False
            for line in open(os.path.join(out, name), errors="replace"):
                if "read(" in line or "read resumed>" in line:
                    # A request read from /dev/fuse is at least its 40-byte header.
                    m = re.search(r"= (\d+)$", line.strip())
                    fuse = "</dev/fuse>" in line or "read resumed>" in line and fuse_pending
                    fuse_pending = "</dev/fuse>" in line and m is None
                    expect_dump = fuse and m is not None and int(m.group(1)) >= 40
                elif expect_dump and "| 00000" in line:
                    hexes = line.split("|")[1].split()[1:9]
                    opcode = int("".join(reversed(hexes[4:8])), 16)
                    counts[OPCODES.get(opcode, str(opcode))] += 1
                    expect_dump = False
        return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default="target/release/sealfs")
    ap.add_argument("--dir", default="/dev/shm/sealfs-requests")
    ap.add_argument("-n", type=int, default=1000, help="files per workload")
    ap.add_argument("--mount-arg", action="append", default=[],
                    help="passed on to sealfs mount (repeat for several)")
    args = ap.parse_args()
    if shutil.which("strace") is None:
        sys.exit("fuse_requests: strace is not installed")
    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    binary, n = os.path.abspath(args.bin), args.n
    m = Mount(binary, args.dir, "vol", args.mount_arg)
    data = os.urandom(4096)

    def create():
        os.makedirs(os.path.join(m.path, "d"), exist_ok=True)
        for i in range(n):
            with open(os.path.join(m.path, "d", f"f{i}"), "wb") as f:
                f.write(data)

    def read_back():
        for i in range(n):
            with open(os.path.join(m.path, "d", f"f{i}"), "rb") as f:
                f.read()

    def stat():
        for i in range(n):
            os.stat(os.path.join(m.path, "d", f"f{i}"))

    def listing():
        os.listdir(os.path.join(m.path, "d"))

    def ls_l():
        subprocess.run(["ls", "-l", os.path.join(m.path, "d")], check=True,
                       stdout=subprocess.DEVNULL)

    def listxattr():
        for i in range(n):
            os.listxattr(os.path.join(m.path, "d", f"f{i}"))

    workloads = [
        ("create + write 4 KiB + close", create, False),
        ("open + read + close (cold)", read_back, True),
        ("open + read + close (warm)", read_back, False),
        ("stat (cold)", stat, True),
        ("stat (warm)", stat, False),
        ("listxattr (warm)", listxattr, False),
        ("readdir of the directory (cold)", listing, True),
        ("ls -l of the directory (cold)", ls_l, True),
    ]
    print(f"| workload ({n} files) | requests the caller waits for, per file | all requests, by opcode |")
    print("|---|---|---|")
    for title, workload, cold in workloads:
        if cold:
            drop_caches()
        with m:
            if title.endswith("(warm)"):
                workload()  # fills the kernel's caches first
            counts = count(m, workload)
        waited = sum(c for op, c in counts.items() if op not in ASYNC)
        ops = ", ".join(f"{op} {c}" for op, c in counts.most_common())
        print(f"| {title} | {waited / n:.2f} | {ops} |")
    shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
