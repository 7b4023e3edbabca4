"""What a post-quantum mutual-TLS handshake costs, per cell of key type and key-exchange group, on fleetsim's own
TLS stacks (fleetsim.tls) and PKI.

    .venv/bin/python benchmarks/bench_pq_handshake.py            # 300 handshakes per cell, in 3 interleaved rounds

Both ends of each TLS 1.3 handshake run in this one process, over a socketpair: the device through the stack's
client connection (non-blocking, as the engine drives it), the broker through its server connection over memory
buffers (as the broker front drives it). Certificates come from a fresh fleetsim PKI per cell, the CA of the
device's key type: the device sends its leaf and the issuing CA, the broker likewise; the server checks the device
against the CA chain and the CRL, the device checks the broker's chain and name. No resumption, tickets off.

Per cell it prints medians over every handshake: CPU of the device's steps, of the broker's steps and of both (thread
CPU time, so the other helper processes on the machine do not count), and the bytes each way of the handshake
proper (the broker's count: what it read until the handshake was done, what it wrote up to its Finished). The
bundled stack's server also sends two stateful session tickets even with tickets off (its binding cannot set their
number to 0): their bytes are printed apart, not in the handshake's.

Rounds interleave the cells so that a busy spell of the shared machine spreads over all of them.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fleetsim.pki import Pki
from fleetsim.tls import ClientContext, ServerContext, Settings, stack

# stack, device and CA key type, groups both ends accept (in order); what the field notes measured is beside it
CELLS: list[tuple[str, str, tuple[str, ...]]] = [
    ("system", "ecdsa-p256", ()),  # today's stack: OpenSSL 3.0 negotiates X25519
    ("bundled", "ecdsa-p256", ("X25519",)),
    ("bundled", "ecdsa-p256", ("X25519MLKEM768",)),
    ("bundled", "ecdsa-p256", ("MLKEM768",)),
    ("bundled", "ml-dsa-44", ("X25519",)),
    ("bundled", "ml-dsa-44", ("X25519MLKEM768",)),
    ("bundled", "ml-dsa-65", ("X25519MLKEM768",)),
]
FIELD_NOTES = {  # both ends' CPU (ms) and KB each way, leaf-only chains (field notes, turn 3)
    ("bundled", "ecdsa-p256", "X25519"): "1.46 ms, 1.1/1.1 KB",
    ("bundled", "ecdsa-p256", "X25519MLKEM768"): "1.60 ms, 2.3/2.2 KB",
    ("bundled", "ecdsa-p256", "MLKEM768"): "1.40 ms",
    ("bundled", "ml-dsa-44", "X25519"): "2.54 ms, 10.7/10.7 KB",
    ("bundled", "ml-dsa-44", "X25519MLKEM768"): "2.63 ms, 11.8/11.7 KB",
    ("bundled", "ml-dsa-65", "X25519MLKEM768"): "3.49 ms, 15.8/15.7 KB",
}


@dataclass
class Cell:
    stack: str
    key_type: str
    groups: tuple[str, ...]
    client: ClientContext
    server: ServerContext
    device_ms: list[float] = field(default_factory=list)
    broker_ms: list[float] = field(default_factory=list)
    up: list[int] = field(default_factory=list)  # device -> broker bytes
    down: list[int] = field(default_factory=list)
    tickets: list[int] = field(default_factory=list)
    group: str = ""


def make_cell(root: Path, stack_name: str, key_type: str, groups: tuple[str, ...]) -> Cell:
    pki = Pki.init(root / f"{stack_name}-{key_type}-{'-'.join(groups) or 'default'}", ca_key_type=key_type)
    (device,) = pki.issue(1, key_type=key_type)
    layout, tls = pki.layout, stack(stack_name)
    settings = Settings(tls_version="1.3", groups=groups)
    cert_pem, key_pem = pki.identity(device.id)
    client = tls.client(layout.ca_chain.read_bytes(), settings, cert_pem, key_pem)
    server = tls.server(layout.server_cert, layout.server_key, settings, ca_pem=layout.ca_chain.read_bytes(),
                        crl_pem=layout.crl.read_bytes())
    return Cell(stack_name, key_type, groups, client, server)


def _drain(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            data = sock.recv(262144)
        except BlockingIOError:
            return b"".join(chunks)
        if not data:
            raise EOFError("the device closed its end")
        chunks.append(data)


def one_handshake(cell: Cell) -> None:
    """Drive both ends to the end of the handshake and record its CPU and bytes."""
    device_sock, broker_sock = socket.socketpair()
    device_sock.setblocking(False)
    broker_sock.setblocking(False)
    device_cpu = broker_cpu = 0.0
    up = down = tickets = 0
    t = time.thread_time()
    device = cell.client.connect(device_sock, "localhost")
    broker = cell.server.accept()
    device_cpu += time.thread_time() - t
    device_done = broker_done = False
    try:
        for _ in range(20):
            if not device_done:
                t = time.thread_time()
                try:
                    device.do_handshake()
                    device_done = True
                except ssl.SSLWantReadError:
                    pass
                device_cpu += time.thread_time() - t
            data = _drain(broker_sock)
            if data and not broker_done:
                up += len(data)
                t = time.thread_time()
                broker.feed(data)
                try:
                    broker.do_handshake()
                    broker_done = True
                except ssl.SSLWantReadError:
                    pass
                out = broker.take()
                broker_cpu += time.thread_time() - t
                if broker_done:
                    tickets += len(out)
                else:
                    down += len(out)
                broker_sock.sendall(out)
            if device_done and broker_done:
                break
        else:
            raise RuntimeError(f"{cell.stack} {cell.key_type} {cell.groups}: the handshake did not finish")
        cell.group = broker.facts().group
    finally:
        device.close()
        broker_sock.close()
    cell.device_ms.append(device_cpu * 1000)
    cell.broker_ms.append(broker_cpu * 1000)
    cell.up.append(up)
    cell.down.append(down)
    cell.tickets.append(tickets)


def report(cells: list[Cell]) -> None:
    print(f"{'stack':8} {'key type':11} {'group':15} {'device ms':>9} {'broker ms':>9} {'both ms':>8} "
          f"{'up B':>7} {'down B':>7} {'tickets B':>9}   field notes (both ms, KB up/down, leaf-only chains)")
    for c in cells:
        both = statistics.median(d + b for d, b in zip(c.device_ms, c.broker_ms, strict=True))
        key = (c.stack, c.key_type, c.groups[0] if c.groups else "")
        print(f"{c.stack:8} {c.key_type:11} {c.group:15} {statistics.median(c.device_ms):9.2f} "
              f"{statistics.median(c.broker_ms):9.2f} {both:8.2f} {statistics.median(c.up):7,.0f} "
              f"{statistics.median(c.down):7,.0f} {statistics.median(c.tickets):9,.0f}   {FIELD_NOTES.get(key, '-')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--handshakes", type=int, default=300, help="per cell, over all rounds (default 300)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"system stack: {stack('system').openssl_version}; bundled stack: {stack('bundled').openssl_version}")
    per_round = max(1, args.handshakes // args.rounds)
    with tempfile.TemporaryDirectory(prefix="bench-pq-") as tmp:
        cells = [make_cell(Path(tmp), *spec) for spec in CELLS]
        for c in cells:  # warm up: first handshakes load code and tables
            for _ in range(5):
                one_handshake(c)
            for series in (c.device_ms, c.broker_ms, c.up, c.down, c.tickets):
                series.clear()
        for _ in range(args.rounds):
            for c in cells:
                for _ in range(per_round):
                    one_handshake(c)
    print(f"{per_round * args.rounds} TLS 1.3 mTLS handshakes per cell, medians:")
    report(cells)


if __name__ == "__main__":
    main()
