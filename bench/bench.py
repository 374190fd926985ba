#!/usr/bin/env python3
"""sealfs benchmark driver: runs the same jobs on every target, side by side in one run,
and reports medians and ratios. Standard library only; fio does the I/O."""

import argparse
import filecmp
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

FIO_DIR = Path(__file__).parent / "fio"


def sh(*args, env=None, check=True, quiet=False):
    out = subprocess.run(args, env=env, text=True, capture_output=True)
    if check and out.returncode != 0:
        sys.exit(f"command failed: {' '.join(map(str, args))}\n{out.stdout}\n{out.stderr}")
    return out


def drop_caches():
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def is_mounted(path):
    target = str(Path(path).resolve())
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == target for line in f)


class Target:
    """A directory to benchmark in, set up and torn down around the jobs."""

    def __init__(self, name, work):
        self.name = name
        self.work = Path(work) / name
        self.dir = None
        self.daemon = None

    def __enter__(self):
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.dir = self.setup()
        return self

    def __exit__(self, *exc):
        self.teardown()
        shutil.rmtree(self.work, ignore_errors=True)

    def setup(self):
        d = self.work / "plain"
        d.mkdir()
        return d

    def teardown(self):
        pass


class SealfsTarget(Target):
    def __init__(self, name, work, binary, options=()):
        super().__init__(name, work)
        self.binary = str(Path(binary).resolve())
        self.options = list(options)

    def setup(self):
        env = dict(os.environ, SEALFS_KEY_DIR=str(self.work / "keys"))
        self.env = env
        cipher, mnt = self.work / "cipher", self.work / "mnt"
        mnt.mkdir()
        sh(self.binary, "init", str(cipher), env=env)
        sh(self.binary, "mount", str(cipher), str(mnt), *self.options, env=env)
        self.mnt = mnt
        self.daemon = daemon_pid(mnt)
        return mnt

    def teardown(self):
        if is_mounted(self.mnt):
            sh(self.binary, "umount", str(self.mnt), env=self.env, check=False)
        for _ in range(100):
            if not is_mounted(self.mnt):
                break
            time.sleep(0.05)


class GocryptfsTarget(Target):
    def __init__(self, name, work, options=()):
        super().__init__(name, work)
        self.options = list(options)

    def setup(self):
        cipher, mnt = self.work / "cipher", self.work / "mnt"
        cipher.mkdir()
        mnt.mkdir()
        sh("gocryptfs", "-init", "-q", "-extpass", "echo bench-pass", "-scryptn", "10", str(cipher))
        sh("gocryptfs", "-q", "-extpass", "echo bench-pass", *self.options, str(cipher), str(mnt))
        self.mnt = mnt
        self.daemon = daemon_pid(mnt)
        return mnt

    def teardown(self):
        sh("umount", str(self.mnt), check=False)


class JuiceFsVolume:
    """A JuiceFS volume (SQLite metadata, a local directory as its object store) mounted by one
    client: the backing directory of the targets benchmarked on shared storage."""

    def __init__(self, binary, work):
        self.binary = binary
        self.work = Path(work) / "juicefs"
        self.mnt = self.work / "mnt"

    def __enter__(self):
        shutil.rmtree(self.work, ignore_errors=True)
        self.mnt.mkdir(parents=True)
        meta = f"sqlite3://{self.work / 'meta.db'}"
        sh(self.binary, "format", "--storage", "file", "--bucket", f"{self.work / 'bucket'}/",
           meta, "sealfs-bench", quiet=True)
        sh(self.binary, "mount", "-d", "--log", str(self.work / "client.log"),
           "--cache-dir", str(self.work / "cache"), meta, str(self.mnt), quiet=True)
        for _ in range(200):
            if is_mounted(self.mnt):
                return self.mnt
            time.sleep(0.05)
        sys.exit("the JuiceFS volume did not mount")

    def __exit__(self, *exc):
        sh("umount", str(self.mnt), check=False)
        shutil.rmtree(self.work, ignore_errors=True)


def process_cpu_seconds(pid):
    """User plus system CPU seconds process `pid` (all its threads) has used so far."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def daemon_pid(mountpoint):
    """The process serving a FUSE mount at `mountpoint` (sealfs, gocryptfs), if any."""
    target = str(Path(mountpoint).resolve()).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if target in args and any(a.endswith((b"sealfs", b"sealfs-passthrough", b"sealfs-baseline", b"gocryptfs"))
                                  for a in args[:1]):
            return int(entry.name)
    return None


def fio(job, directory, size, runtime, daemon=None):
    """Runs a fio job. CPU is what fio's job used (its own accounting: user and system time,
    which holds the kernel's FUSE work on the caller's side) plus what the FUSE daemon used
    meanwhile (its rusage), per GiB moved."""
    daemon_before = process_cpu_seconds(daemon)
    out = sh(
        "fio", "--output-format=json", f"--directory={directory}",
        f"--size={size}", f"--runtime={runtime}", str(FIO_DIR / f"{job}.fio"),
    )
    daemon_cpu = process_cpu_seconds(daemon) - daemon_before
    data = json.loads(out.stdout)
    result = data["jobs"][0]
    rw = "write" if result["write"]["bw_bytes"] > 0 and result["read"]["bw_bytes"] == 0 else "read"
    mib = (result["read"]["bw_bytes"] + result["write"]["bw_bytes"]) / 2**20
    iops = result["read"]["iops"] + result["write"]["iops"]
    moved = result["read"]["io_bytes"] + result["write"]["io_bytes"]
    fio_cpu = (result["usr_cpu"] + result["sys_cpu"]) / 100 * result["job_runtime"] / 1000
    cpu = fio_cpu + daemon_cpu
    return {"mib_s": mib, "iops": iops, "dir": rw,
            "cpu_s_per_gib": cpu / (moved / 2**30) if moved else 0.0}


def cipher_cost(block_size=4096):
    """The cipher's own cost, core-seconds per GiB, to seal and to open blocks of
    `block_size` bytes on one core: from the criterion bench (bench/crypto.rs, `block` group,
    run briefly here), the implementation this build seals with."""
    sh("cargo", "bench", "--locked", "--bench", "crypto", "--", f"block/.*/{block_size}$",
       "--quick", "--noplot")
    cost = {}
    for op in ["seal", "open"]:
        est = Path("target/criterion/block") / op / str(block_size) / "new/estimates.json"
        ns = json.loads(est.read_text())["mean"]["point_estimate"]
        cost[op] = ns * 1e-9 * (2**30 / block_size)
    return cost


def small_files(directory, count):
    """Create, write and close `count` files of 4 KiB, then read them all back."""
    d = Path(directory) / "small"
    d.mkdir()
    payload = os.urandom(4096)
    start = time.perf_counter()
    for i in range(count):
        fd = os.open(d / f"f{i:05}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, payload)
        os.close(fd)
    os.sync()
    created = time.perf_counter() - start
    drop_caches()
    start = time.perf_counter()
    for i in range(count):
        with open(d / f"f{i:05}", "rb") as f:
            assert len(f.read()) == 4096
    read = time.perf_counter() - start
    return (
        {"files_s": count / created, "mib_s": count * 4096 / 2**20 / created},
        {"files_s": count / read, "mib_s": count * 4096 / 2**20 / read},
    )


def long_name_creates(directory, count):
    """Create `count` empty files under names of 200 bytes (past the 174 that fit inline: each
    gets a long-name sidecar, made durable before its entry), then sync. Files/s."""
    d = Path(directory) / "long"
    d.mkdir()
    start = time.perf_counter()
    for i in range(count):
        os.close(os.open(d / (f"{i:06}" + "n" * 194), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    os.sync()
    return count / (time.perf_counter() - start)


def append_fsync(directory, count):
    """A log writer: one 37-byte line appended and fsynced, `count` times (each append after the
    first rewrites the file's last, partial block). Lines/s."""
    path = Path(directory) / "append.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    line = b"2026-12-07T05:00:00Z backup ok 0001\n"
    start = time.perf_counter()
    for _ in range(count):
        os.write(fd, line)
        os.fsync(fd)
    took = time.perf_counter() - start
    os.close(fd)
    return count / took


def sqlite_inserts(directory, count):
    """A catalogue: sqlite (rollback journal, the default, synchronous=FULL), one row inserted
    per transaction, `count` times. Inserts/s."""
    import sqlite3
    db = sqlite3.connect(Path(directory) / "catalogue.db", isolation_level=None)
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    body = os.urandom(200)
    start = time.perf_counter()
    for _ in range(count):
        db.execute("BEGIN")
        db.execute("INSERT INTO t (body) VALUES (?)", (body,))
        db.execute("COMMIT")
    took = time.perf_counter() - start
    db.close()
    return count / took


def make_tarball(path, files):
    """A source tarball from the cargo registry's unpacked crates: real, varied files."""
    roots = sorted(Path.home().glob(".cargo/registry/src/*"))
    if not roots:
        roots = [Path(__file__).resolve().parent.parent / "src"]
    members = []
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.stat().st_size < 256 * 1024:
                members.append(p)
            if len(members) >= files:
                break
    with tarfile.open(path, "w") as tar:
        for p in members:
            tar.add(p, arcname=str(p.relative_to(p.parents[len(p.parents) - 2])))
    return len(members), sum(p.stat().st_size for p in members)


def untar(directory, tarball, count, size):
    d = Path(directory) / "untar"
    d.mkdir()
    start = time.perf_counter()
    sh("tar", "-xf", str(tarball), "-C", str(d))
    os.sync()
    took = time.perf_counter() - start
    return {"files_s": count / took, "mib_s": size / 2**20 / took}


def rsync_and_diff(directory, source, count):
    """What a sync tool and a checker do to a tree: `rsync -aHAX` of the unpacked tarball
    (`source`, outside the target) into the target, then `diff -r` of that copy against the
    untar job's copy, both inside the target, caches dropped first. Files/s of each."""
    d = Path(directory) / "rsync"
    start = time.perf_counter()
    sh("rsync", "-aHAX", f"{source}/", str(d))
    os.sync()
    copied = time.perf_counter() - start
    drop_caches()
    start = time.perf_counter()
    sh("diff", "-r", str(Path(directory) / "untar"), str(d), quiet=True)
    compared = time.perf_counter() - start
    return count / copied, count / compared


JOBS = [
    ("seq-write-1M", "MiB/s"), ("seq-read-1M", "MiB/s"),
    ("rand-read-4k", "IOPS"), ("rand-write-4k", "IOPS"), ("mix-64k", "MiB/s"),
    ("small-create-4k", "files/s"), ("small-read-4k", "files/s"),
    ("create-long-name", "files/s"), ("untar", "files/s"),
    ("rsync-aHAX", "files/s"), ("diff-r", "files/s"),
    ("append-fsync", "lines/s"), ("sqlite-insert", "inserts/s"),
]


def run_target(target, args, tarball, tar_count, tar_size):
    results = {}
    with target as t:
        d = t.dir
        fio("seq-write-1M", d, args.seq_size, args.runtime)  # warm-up, not counted
        r = fio("seq-write-1M", d, args.seq_size, args.runtime, t.daemon)
        results["seq-write-1M"] = r["mib_s"]
        results["cpu-seq-write-1M"] = r["cpu_s_per_gib"]
        drop_caches()
        r = fio("seq-read-1M", d, args.seq_size, args.runtime, t.daemon)
        results["seq-read-1M"] = r["mib_s"]
        results["cpu-seq-read-1M"] = r["cpu_s_per_gib"]
        results["rand-read-4k"] = fio("rand-read-4k", d, args.rand_size, args.runtime)["iops"]
        results["rand-write-4k"] = fio("rand-write-4k", d, args.rand_size, args.runtime)["iops"]
        results["mix-64k"] = fio("mix-64k", d, args.rand_size, args.runtime)["mib_s"]
        created, read = small_files(d, args.small_files)
        results["small-create-4k"] = created["files_s"]
        results["small-read-4k"] = read["files_s"]
        results["create-long-name"] = long_name_creates(d, args.small_files)
        results["untar"] = untar(d, tarball, tar_count, tar_size)["files_s"]
        results["rsync-aHAX"], results["diff-r"] = rsync_and_diff(d, tarball.parent / "source", tar_count)
        results["append-fsync"] = append_fsync(d, args.durable_ops)
        results["sqlite-insert"] = sqlite_inserts(d, args.durable_ops)
    return results


def read_tree(root):
    """Reads every regular file under `root` (1 MiB reads), as a backup tool would: returns
    (bytes, files, seconds)."""
    total = files = 0
    start = time.perf_counter()
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            with open(path, "rb", buffering=0) as f:
                while True:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    total += len(chunk)
            files += 1
    return total, files, time.perf_counter() - start


def make_plain_trees(work, seq_bytes, small_count):
    """Two plaintext trees: `large` (4 files of seq_bytes/4) and `small` (4 KiB files in 20
    directories). Incompressible contents."""
    large, small = work / "large", work / "small"
    large.mkdir(parents=True)
    block = os.urandom(1 << 20)
    for i in range(4):
        with open(large / f"big{i}", "wb") as f:
            for _ in range(max(1, seq_bytes // 4 // len(block))):
                f.write(block)
    for i in range(small_count):
        d = small / f"d{i % 20:02}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05}").write_bytes(os.urandom(4096))
    return {"large": large, "small": small}


class ReverseView:
    """A reverse view of a plaintext tree (sealfs or gocryptfs -reverse), mounted read-only."""

    def __init__(self, kind, plain, mnt, binary=None):
        self.kind, self.plain, self.mnt, self.binary = kind, plain, mnt, binary
        self.env = dict(os.environ, SEALFS_KEY_DIR=str(mnt.parent / "keys"))

    def __enter__(self):
        self.mnt.mkdir(parents=True, exist_ok=True)
        if self.kind == "sealfs-reverse":
            if not (self.plain / ".sealfs.reverse.conf").exists():
                sh(self.binary, "init", "--reverse", str(self.plain), env=self.env)
            sh(self.binary, "mount", "--reverse", str(self.plain), str(self.mnt), env=self.env)
        else:
            if not (self.plain / ".gocryptfs.reverse.conf").exists():
                sh("gocryptfs", "-init", "-reverse", "-q", "-extpass", "echo bench-pass",
                   "-scryptn", "10", str(self.plain))
            sh("gocryptfs", "-reverse", "-q", "-extpass", "echo bench-pass", str(self.plain), str(self.mnt))
        return self.mnt

    def __exit__(self, *exc):
        sh("umount", str(self.mnt), check=False)
        for _ in range(100):
            if not is_mounted(self.mnt):
                break
            time.sleep(0.05)


REVERSE_JOBS = [("read-large", "MiB/s"), ("read-small", "files/s")]


def reverse_bench(args, work, sealfs_binary):
    """Reading a plaintext tree directly against reading its reverse view (what a backup tool
    does), caches dropped before each read. Throughput is in plaintext terms: the same bytes
    and files, so the ratio is a ratio of times."""
    base = work / "reverse"
    shutil.rmtree(base, ignore_errors=True)
    trees = make_plain_trees(base / "plain", int(args.seq_size[:-1]) << 20 if args.seq_size.endswith("M")
                             else int(args.seq_size[:-1]) << 30, args.small_files)
    names = ["plain", "sealfs-reverse"]
    if shutil.which("gocryptfs") and not args.no_gocryptfs:
        names.append("gocryptfs-reverse")
    runs = {n: [] for n in names}
    for i in range(args.runs):
        for n in names:
            print(f"reverse run {i+1}/{args.runs}: {n} ...", file=sys.stderr, flush=True)
            result = {}
            for tree, plain in trees.items():
                job = "read-large" if tree == "large" else "read-small"
                files = [p for p in plain.rglob("*") if p.is_file() and not p.name.startswith(".")]
                size, count = sum(p.stat().st_size for p in files), len(files)
                if n == "plain":
                    drop_caches()
                    _, _, took = read_tree(plain)
                else:
                    with ReverseView(n, plain, base / n / tree, sealfs_binary) as view:
                        drop_caches()
                        _, _, took = read_tree(view)
                result[job] = size / 2**20 / took if job == "read-large" else count / took
            runs[n].append(result)
    table = {n: {j: statistics.median(r[j] for r in runs[n]) for j, _ in REVERSE_JOBS} for n in names}
    for plain in trees.values():
        for conf in [".sealfs.reverse.conf", ".gocryptfs.reverse.conf"]:
            (plain / conf).unlink(missing_ok=True)
    shutil.rmtree(base, ignore_errors=True)
    return table, runs, names


def reverse_markdown(table, names):
    head = "| job | unit | " + " | ".join(names) + " | sealfs-reverse / plain | sealfs-reverse / gocryptfs-reverse |"
    lines = [head, "|" + "---|" * (len(names) + 4)]
    for job, unit in REVERSE_JOBS:
        row = [f"{table[n][job]:,.0f}" for n in names]
        vs_plain = table["sealfs-reverse"][job] / table["plain"][job]
        vs_go = (
            f'{table["sealfs-reverse"][job] / table["gocryptfs-reverse"][job]:.2f}x'
            if "gocryptfs-reverse" in table else "n/a"
        )
        lines.append(f"| {job} | {unit} | " + " | ".join(row) + f" | {vs_plain:.2f}x | {vs_go} |")
    return "\n".join(lines) + "\n"


def svg_chart(table, targets, path):
    """Grouped bars: each target's result relative to the passthrough (= 1.0), per job."""
    base = "passthrough"
    jobs = [j for j, _ in JOBS]
    colors = {"raw": "#9e9e9e", "passthrough": "#607d8b", "sealfs": "#2e7d32", "gocryptfs": "#c62828"}
    w, h, left, top, bottom = 900, 380, 60, 40, 80
    group = (w - left - 20) / len(jobs)
    bar = group / (len(targets) + 1)
    vmax = max(
        [table[t][j] / table[base][j] for t in targets for j in jobs if table[base][j] > 0] + [1.2]
    )
    vmax = min(vmax, 4.0)
    y = lambda v: top + (h - top - bottom) * (1 - min(v, vmax) / vmax)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
        f'<text x="{left}" y="20" font-size="14">sealfs benchmark: throughput relative to the no-crypto passthrough (1.0)</text>',
    ]
    for v in [0.5, 1.0, 1.5, 2.0, 3.0, 4.0]:
        if v <= vmax:
            parts.append(f'<line x1="{left}" x2="{w-20}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
            parts.append(f'<text x="{left-8}" y="{y(v)+4:.1f}" text-anchor="end">{v:.1f}x</text>')
    for gi, job in enumerate(jobs):
        x0 = left + gi * group + bar / 2
        for ti, t in enumerate(targets):
            v = table[t][job] / table[base][job] if table[base][job] else 0
            parts.append(
                f'<rect x="{x0+ti*bar:.1f}" y="{y(v):.1f}" width="{bar*0.9:.1f}" '
                f'height="{y(0)-y(v):.1f}" fill="{colors.get(t, "#000")}"><title>{t} {job}: {v:.2f}x</title></rect>'
            )
        parts.append(f'<text x="{x0+group/2-bar/2:.1f}" y="{h-bottom+16}" text-anchor="middle">{job}</text>')
    for ti, t in enumerate(targets):
        parts.append(f'<rect x="{left+ti*130}" y="{h-30}" width="12" height="12" fill="{colors.get(t, "#000")}"/>')
        parts.append(f'<text x="{left+ti*130+18}" y="{h-20}">{t}</text>')
    parts.append("</svg>")
    Path(path).write_text("\n".join(parts) + "\n")


JUICEFS_TARGETS = ["juicefs", "sealfs", "sealfs-shared", "gocryptfs-shared"]


def juicefs_bench(args, work, tarball, tar_count, tar_size, have_gocryptfs):
    """The jobs on a JuiceFS backing, targets interleaved in every run: raw JuiceFS, sealfs on
    it alone and with -o shared, and gocryptfs -sharedstorage."""
    names = [n for n in JUICEFS_TARGETS if have_gocryptfs or not n.startswith("gocryptfs")]
    if args.baseline:
        names.append("baseline-shared")
    runs = {n: [] for n in names}
    with JuiceFsVolume(args.juicefs, work) as backing:
        def make(name):
            return {
                "juicefs": lambda: Target("juicefs", backing),
                "sealfs": lambda: SealfsTarget("sealfs", backing, args.sealfs),
                "sealfs-shared": lambda: SealfsTarget(
                    "sealfs-shared", backing, args.sealfs, ["-o", "shared"]),
                "gocryptfs-shared": lambda: GocryptfsTarget(
                    "gocryptfs-shared", backing, ["-sharedstorage"]),
                "baseline-shared": lambda: SealfsTarget(
                    "baseline-shared", backing, args.baseline, ["-o", "shared"]),
            }[name]()

        for i in range(args.runs):
            for n in names:
                print(f"juicefs run {i+1}/{args.runs}: {n} ...", file=sys.stderr, flush=True)
                runs[n].append(run_target(make(n), args, tarball, tar_count, tar_size))
    table = {n: {j: statistics.median(r[j] for r in runs[n]) for j, _ in JOBS} for n in names}
    return table, runs, names


def juicefs_markdown(table, names):
    ratio = lambda a, b: f"{table[a][job] / table[b][job]:.2f}x" if b in table and table[b][job] else "n/a"
    ab = "baseline-shared" in table
    head = ("| job | unit | " + " | ".join(names)
            + " | sealfs / juicefs | sealfs-shared / juicefs | sealfs-shared / gocryptfs-shared |"
            + (" sealfs-shared / baseline-shared |" if ab else ""))
    lines = [head, "|" + "---|" * (len(names) + 5 + ab)]
    for job, unit in JOBS:
        row = [f"{table[n][job]:,.0f}" for n in names]
        lines.append(f"| {job} | {unit} | " + " | ".join(row) + f" | {ratio('sealfs', 'juicefs')}"
                     f" | {ratio('sealfs-shared', 'juicefs')} | {ratio('sealfs-shared', 'gocryptfs-shared')} |"
                     + (f" {ratio('sealfs-shared', 'baseline-shared')} |" if ab else ""))
    return "\n".join(lines) + "\n"


def markdown(table, targets):
    ab = "baseline" in table
    head = ("| job | unit | " + " | ".join(targets) + " | sealfs / passthrough | sealfs / gocryptfs |"
            + (" sealfs / baseline |" if ab else ""))
    lines = [head, "|" + "---|" * (len(targets) + 4 + ab)]
    for job, unit in JOBS:
        row = [f"{table[t][job]:,.0f}" for t in targets]
        vs_pt = table["sealfs"][job] / table["passthrough"][job]
        vs_go = (
            f'{table["sealfs"][job] / table["gocryptfs"][job]:.2f}x' if "gocryptfs" in table else "n/a"
        )
        vs_base = f' {table["sealfs"][job] / table["baseline"][job]:.2f}x |' if ab else ""
        lines.append(f"| {job} | {unit} | " + " | ".join(row) + f" | {vs_pt:.2f}x | {vs_go} |{vs_base}")
    return "\n".join(lines) + "\n"


CPU_JOBS = [("seq-write-1M", "seal"), ("seq-read-1M", "open")]


def cpu_markdown(table, targets, cipher):
    """Core-seconds per GiB moved, machine-wide, next to the cipher's own cost: what sealfs
    spends beyond the passthrough (same FUSE layer, no cipher) against what the cipher needs."""
    head = ("| job | " + " | ".join(targets)
            + " | sealfs - passthrough | cipher alone | (sealfs - passthrough) / cipher |")
    lines = ["## CPU: core-seconds per GiB (fio's job CPU, kernel side included, plus the FUSE daemon's)\n", head,
             "|" + "---|" * (len(targets) + 4)]
    for job, op in CPU_JOBS:
        key = f"cpu-{job}"
        row = [f"{table[t][key]:.3f}" for t in targets]
        extra = table["sealfs"][key] - table["passthrough"][key]
        lines.append(f"| {job} | " + " | ".join(row)
                     + f" | {extra:.3f} | {cipher[op]:.3f} ({op}) | {extra / cipher[op]:.2f}x |")
    return "\n".join(lines) + "\n"


JUICEFS_HEADING = "## On a JuiceFS backing (one client; SQLite metadata, local object store)\n\n"


def write_section(out, stem, table, runs, md):
    """The results of a run of one section only (--reverse-only, --juicefs-only)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps({"median": table, "runs": runs}, indent=2) + "\n")
    (out / f"{stem}.md").write_text(md)
    print(md)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sealfs", required=True)
    p.add_argument("--passthrough", required=True)
    p.add_argument("--baseline", help="an older sealfs binary, run as one more target (A/B, see bench/ab)")
    p.add_argument("--quick", action="store_true", help="short jobs, one run")
    p.add_argument("--runs", type=int, default=None, help="runs per target (median taken)")
    p.add_argument("--dir", default="/dev/shm/sealfs-bench", help="backing directory (tmpfs by default)")
    p.add_argument("--out", default="target/bench-results")
    p.add_argument("--no-gocryptfs", action="store_true")
    p.add_argument("--reverse-only", action="store_true", help="only the reverse-mode benchmark")
    p.add_argument("--juicefs", default="/opt/sealfs-ci/venv/bin/juicefs",
                   help="the JuiceFS client, for the rows on a JuiceFS backing (skipped if missing)")
    p.add_argument("--no-juicefs", action="store_true")
    p.add_argument("--juicefs-only", action="store_true", help="only the rows on a JuiceFS backing")
    args = p.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    args.seq_size = "64M" if args.quick else "1G"
    args.rand_size = "32M" if args.quick else "256M"
    args.runtime = 2 if args.quick else 10
    if args.baseline and filecmp.cmp(args.sealfs, args.baseline, shallow=False):
        print("bench: sealfs and the baseline are the same binary: the A/B compares nothing",
              file=sys.stderr)
    args.small_files = 1000 if args.quick else 10000
    args.durable_ops = 300 if args.quick else 2000
    tar_files = 500 if args.quick else 3000

    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    tarball = work / "source.tar"
    tar_count, tar_size = make_tarball(tarball, tar_files)
    # The rsync job's source: the same tree, unpacked once on the backing filesystem.
    source = work / "source"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir()
    sh("tar", "-xf", str(tarball), "-C", str(source))
    names = ["raw", "passthrough", "sealfs"] + (["baseline"] if args.baseline else [])
    have_gocryptfs = shutil.which("gocryptfs") and not args.no_gocryptfs
    if have_gocryptfs:
        names.append("gocryptfs")

    def make(name):
        return {
            "raw": lambda: Target("raw", work),
            "passthrough": lambda: SealfsTarget("passthrough", work, args.passthrough),
            "sealfs": lambda: SealfsTarget("sealfs", work, args.sealfs),
            "baseline": lambda: SealfsTarget("baseline", work, args.baseline),
            "gocryptfs": lambda: GocryptfsTarget("gocryptfs", work),
        }[name]()

    if args.juicefs_only:
        if not Path(args.juicefs).exists():
            sys.exit(f"--juicefs-only: no JuiceFS client at {args.juicefs} (--juicefs PATH)")
        table, runs, names = juicefs_bench(args, work, tarball, tar_count, tar_size, have_gocryptfs)
        write_section(args.out, "juicefs", table, runs, JUICEFS_HEADING + juicefs_markdown(table, names))
        shutil.rmtree(work, ignore_errors=True)
        return
    runs = {n: [] for n in names}
    for i in range(0 if args.reverse_only else args.runs):
        # Interleave targets in every run, so drift on a shared machine hits all of them.
        for n in names:
            print(f"run {i+1}/{args.runs}: {n} ...", file=sys.stderr, flush=True)
            runs[n].append(run_target(make(n), args, tarball, tar_count, tar_size))
    reverse_table, reverse_runs, reverse_names = reverse_bench(args, work, args.sealfs)
    rmd = "## Reverse mode: reading the view against reading the plaintext tree\n\n" + reverse_markdown(
        reverse_table, reverse_names)
    if args.reverse_only:
        write_section(args.out, "reverse", reverse_table, reverse_runs, rmd)
        shutil.rmtree(work, ignore_errors=True)
        return
    cpu_keys = [f"cpu-{j}" for j, _ in CPU_JOBS]
    table = {n: {j: statistics.median(r[j] for r in runs[n]) for j in [j for j, _ in JOBS] + cpu_keys}
             for n in names}
    cipher = cipher_cost()
    juicefs_table, juicefs_runs, juicefs_names = {}, {}, []
    if args.no_juicefs or not Path(args.juicefs).exists():
        print(f"JuiceFS rows skipped: no JuiceFS client at {args.juicefs}", file=sys.stderr)
    else:
        juicefs_table, juicefs_runs, juicefs_names = juicefs_bench(
            args, work, tarball, tar_count, tar_size, have_gocryptfs)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick, "runs": args.runs, "backing": str(work),
        "kernel": os.uname().release, "cpus": os.cpu_count(),
        "seq_size": args.seq_size, "rand_size": args.rand_size, "runtime_s": args.runtime,
        "small_files": args.small_files, "untar_files": tar_count, "untar_bytes": tar_size,
    }
    (out / "results.json").write_text(json.dumps({
        "meta": meta, "median": table, "runs": runs, "cipher_cpu_s_per_gib": cipher,
        "reverse": {"median": reverse_table, "runs": reverse_runs},
        "juicefs": {"median": juicefs_table, "runs": juicefs_runs},
    }, indent=2) + "\n")
    md = markdown(table, names) + "\n" + cpu_markdown(table, names, cipher) + "\n" + rmd
    if juicefs_names:
        md += "\n" + JUICEFS_HEADING + juicefs_markdown(juicefs_table, juicefs_names)
    (out / "results.md").write_text(md)
    svg_chart(table, names, out / "chart.svg")
    print(md)
    print(f"results: {out}/results.json, results.md, chart.svg")
    shutil.rmtree(work, ignore_errors=True)
    bad = [f"{n}/{j}" for n in names for j, _ in JOBS if not table[n][j] > 0]
    bad += [f"{n}/{j}" for n in reverse_names for j, _ in REVERSE_JOBS if not reverse_table[n][j] > 0]
    bad += [f"juicefs {n}/{j}" for n in juicefs_names for j, _ in JOBS if not juicefs_table[n][j] > 0]
    if bad:
        sys.exit(f"benchmark produced no number for: {', '.join(bad)}")


if __name__ == "__main__":
    main()
