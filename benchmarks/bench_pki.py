"""How fast fleetsim issues device identities, beside what the crypto alone allows on this machine.

    .venv/bin/python benchmarks/bench_pki.py            # ecdsa-p256 x 10,000 and rsa-2048 x 1,000, 3 reps

For each key type it measures, in the same run:
  * fleetsim: ``Pki.issue(n)`` into a fresh PKI: keys, certificates, files (0600 keys) and the inventory on disk;
  * reference: a tight loop of the library's own key generation + certificate build + sign
    (``keys.generate`` + ``certs.DeviceSigner.sign``) on all cores, in an already started process pool,
    writing nothing. It is the ceiling: what is left once disk, inventory and process start are removed.
Prints the median over the repetitions of each, and fleetsim's rate as a fraction of the reference.
RSA-2048 key generation is ~100x slower than P-256, hence its smaller default count.

Every run's PKI is kept until the end: on ext4 without a journal (this machine's /), creating a file scans
past every inode of the block group deleted in the last 60 s, or in the last 360 s while its inode table block
is dirty, as creating files keeps it (``recently_deleted`` in ``find_inode_bit``, fs/ext4/ialloc.c; seen with
perf here). That turns a ~25 us file creation into ~300 us, and any deleting of many files under the
same directory tree (this benchmark's own cleanup, a test suite's tmp dirs) does it. So each PKI goes into a
block group of its own (``chattr +T`` on the run's directory: ext4 then spreads new subdirectories over
groups the way it does top-level ones), the normal case of a new PKI on a disk with free space, instead of
following wherever the previous runs were just deleted. The run starts with a probe of what one file creation
costs there, and moves on to another directory if it is slow. ``--dir /dev/shm`` leaves the disk out.
"""

from __future__ import annotations

import argparse
import array
import datetime as dt
import fcntl
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from fleetsim.pki import KeyType, Pki, certs, keys

DEFAULT_COUNTS = {"ecdsa-p256": 10_000, "rsa-2048": 1_000}

_signer: certs.DeviceSigner | None = None


def _init_reference(ca_type: str) -> None:
    """Each worker gets its own issuing CA, as Pki.issue's workers load theirs."""
    global _signer
    ca_key = keys.generate(KeyType(ca_type))
    ca_cert = certs.root_ca(ca_key, "bench")
    _signer = certs.DeviceSigner(certs.Issuer(ca_cert, ca_key), org="bench", trust_domain="bench.local",
                                 crl_url="file:///tmp/crl.pem")


def _reference_chunk(args: tuple[str, int, int]) -> int:
    key_type, start, n = args
    assert _signer is not None
    kt = KeyType(key_type)
    now = certs.utcnow()
    not_after = now + dt.timedelta(days=365)
    for i in range(start, start + n):
        _signer.sign(keys.generate(kt), f"dev-{i:05d}", "bench", now, not_after)
    return n


def reference_rate(pool: multiprocessing.pool.Pool, key_type: str, count: int, workers: int) -> float:
    """Identities per second from crypto alone, split evenly across the pool's workers."""
    size = -(-count // (workers * 4))
    chunks = [(key_type, s, min(size, count - s)) for s in range(0, count, size)]
    t0 = time.perf_counter()
    done = sum(pool.map(_reference_chunk, chunks))
    return done / (time.perf_counter() - t0)


def fleetsim_rate(base: Path, key_type: str, count: int, workers: int, skipped: list[float]) -> float:
    """Identities per second through Pki.issue into a fresh PKI (its creation is not timed)."""
    root = quiet_dir(base, skipped) / "pki"
    pki = Pki.init(root)
    t0 = time.perf_counter()
    issued = pki.issue(count, key_type=key_type, workers=workers)
    elapsed = time.perf_counter() - t0
    assert len(issued) == count and len(Pki.open(root).inventory.devices) == count
    return count / elapsed


FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000  # linux/fs.h


def spread_subdirs(base: Path) -> bool:
    """``chattr +T base`` (see the module docstring); False where the filesystem has no such flag."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        flags[0] |= FS_TOPDIR_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags, True)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


PROBE_FILES = 200
SLOW_CREATE_US = 80  # quiet ext4 here: ~25 us per file; far above means recently deleted inodes are being skipped
TRIES = 5


def create_cost_us(where: Path) -> float:
    """Microseconds to create and write one small file in ``where`` now, as Pki.issue does per file."""
    fd_dir = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    data = b"x" * 700
    try:
        t0 = time.perf_counter()
        for i in range(PROBE_FILES):
            fd = os.open(f"probe-{i}.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd_dir)
            os.write(fd, data)
            os.close(fd)
        return (time.perf_counter() - t0) / PROBE_FILES * 1e6
    finally:
        os.close(fd_dir)


def quiet_dir(base: Path, skipped: list[float]) -> Path:
    """A new directory under ``base`` whose block group creates files at the normal speed (module docstring).
    One where the kernel is skipping recently deleted inodes is noted in ``skipped`` and kept till the end
    (deleting it would only add more); another is tried."""
    for _ in range(TRIES):
        where = Path(tempfile.mkdtemp(dir=base))
        cost = create_cost_us(where)
        if cost <= SLOW_CREATE_US:
            break
        skipped.append(cost)
    return where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--key-type", action="append", choices=[k.value for k in KeyType],
                        help="repeatable; default: ecdsa-p256 and rsa-2048")
    parser.add_argument("--count", type=int, help="identities per run (default: 10,000 P-256, 1,000 RSA)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where PKIs are written")
    parser.add_argument("--keep", action="store_true",
                        help="leave the PKIs (delete them yourself): the next run within 6 minutes is then not slowed")
    args = parser.parse_args()
    key_types = args.key_type or list(DEFAULT_COUNTS)

    ctx = multiprocessing.get_context("fork")
    args.dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="bench-pki-", dir=args.dir))
    try:
        _run(args, key_types, ctx, base)
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base)  # only at the end: see the module docstring


def _run(args: argparse.Namespace, key_types: list[str], ctx: Any, base: Path) -> None:
    spread = " (one block group per PKI)" if spread_subdirs(base) else ""
    print(f"{args.workers} worker(s), {args.reps} reps, medians; PKIs written under {base}{spread}")
    print(f"{'key type':<12} {'count':>7} {'fleetsim/s':>11} {'time s':>7} {'reference/s':>12} {'ratio':>6}")
    skipped: list[float] = []
    with ctx.Pool(args.workers, initializer=_init_reference, initargs=("ecdsa-p256",)) as pool:
        for kt in key_types:
            count = args.count or DEFAULT_COUNTS.get(kt, 1_000)
            ours, ref = [], []
            for _ in range(args.reps):  # interleaved, so drift in machine load hits both alike
                ref.append(reference_rate(pool, kt, count, args.workers))
                ours.append(fleetsim_rate(base, kt, count, args.workers, skipped))
            o, r = statistics.median(ours), statistics.median(ref)
            print(f"{kt:<12} {count:>7,} {o:>11,.0f} {count / o:>7.2f} {r:>12,.0f} {o / r:>6.2f}")
    if skipped:
        costs = ", ".join(f"{c:.0f}" for c in skipped)
        print(f"skipped {len(skipped)} director(ies) where creating a file took {costs} us (recently deleted inodes)")


if __name__ == "__main__":
    main()
