"""Starting the embedded default servers: RabbitMQ (the machine's), nx-27017 (MongoDB wire
protocol on SQLite) and moto_server (S3 API). Used by ``make run`` and by the test suite."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

BIN = Path(sys.executable).parent


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def _ephemeral_start() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


def free_port(count: int = 1) -> int:
    """The first of ``count`` consecutive ports, all free now, below the kernel's ephemeral range.

    A port the kernel hands out (binding port 0) is one it may also give any outgoing connection
    as its local port before the server that was meant to bind it starts; with S3 stand-ins that
    close every connection, thousands of those are made. Below the ephemeral range only an
    explicit bind can take it.
    """
    high = _ephemeral_start()
    for _ in range(200):
        base = random.randrange(max(1024, high - 12000), high - count + 1)
        if all(_bindable(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} free consecutive ports below the ephemeral range")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s")


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes] | None

    def stop(self, timeout: float = 10) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_mongo_standin(data_dir: Path, port: int, log_dir: Path) -> Server:
    data_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    if port_open("127.0.0.1", port):
        raise RuntimeError(f"port {port} is taken; set MONGO_URL or DARKROOM_MONGO_PORT")
    with (log_dir / "nx-27017.out").open("ab") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "nx-27017"),
                "--data-dir",
                str(data_dir),
                "--host",
                "127.0.0.1",
                "-p",
                str(port),
                "--log-file",
                str(log_dir / "nx-27017.log"),
                "--pid-file",
                str(data_dir / "nx.pid"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_until(lambda: port_open("127.0.0.1", port), 30, "nx-27017")
    return Server("mongodb (nx-27017)", f"mongodb://127.0.0.1:{port}", proc)


def start_s3_standin(port: int, log_dir: Path) -> Server:
    log_dir.mkdir(parents=True, exist_ok=True)
    if port_open("127.0.0.1", port):
        raise RuntimeError(f"port {port} is taken; set S3_ENDPOINT_URL or DARKROOM_S3_PORT")
    with (log_dir / "moto_server.log").open("ab") as out:
        proc = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except OSError:
            return False

    wait_until(up, 30, "moto_server")
    return Server("s3 (moto_server)", url, proc)


def ensure_rabbitmq(amqp_url: str, timeout: float = 60) -> bool:
    """Make sure a broker answers at amqp_url; start the machine's RabbitMQ if it is installed but
    not running. True when this call started it (so the caller should stop it)."""
    parts = urlsplit(amqp_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    if port_open(host, port):
        return False
    server = shutil.which("rabbitmq-server") or "/usr/lib/rabbitmq/bin/rabbitmq-server"
    if host not in ("127.0.0.1", "localhost") or not os.path.exists(server):
        raise RuntimeError(
            f"no AMQP broker at {host}:{port} and no local rabbitmq-server to start; "
            "install it (apt-get install -y rabbitmq-server) or set AMQP_URL"
        )
    subprocess.run(
        [server, "-detached"], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_until(lambda: port_open(host, port), timeout, "rabbitmq-server")
    return True


def stop_rabbitmq() -> None:
    ctl = shutil.which("rabbitmqctl") or "/usr/lib/rabbitmq/bin/rabbitmqctl"
    subprocess.run(
        [ctl, "stop"], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60
    )


# ---- fault injection (tests/faults) ---------------------------------------------------------


def children_of(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (children, grandchildren...), read from /proc.

    Collected before a kill -9: afterwards the orphans are re-parented to init and nothing links
    them to the process that started them any more."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone while we looked
        # The command name is in parentheses and may itself contain spaces or parentheses.
        fields = text[text.rfind(")") + 2 :].split()
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rfind(")") + 2 :].split()[0] != "Z"


class TcpProxy:
    """A TCP forwarder that can be cut: every connection through it is closed at once and new
    ones are refused until it is restored. For clients this is what a broker (or any server)
    going away looks like, without stopping the server that others share. ``bytes_per_second``,
    when set (at any time), caps each connection's speed in each direction: on a fast machine,
    work that must still be under way when a case strikes lasts as long as it does on a slow
    one."""

    def __init__(self, target_host: str, target_port: int, listen_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = listen_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self.bytes_per_second: float | None = None

    @property
    def url_netloc(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Refuse new connections and drop every open one."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self.cut()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = {writer, up_writer}
        self._writers |= pair
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
            )
        finally:
            for w in pair:
                w.transport.abort()
            self._writers -= pair

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
                if self.bytes_per_second:
                    await asyncio.sleep(len(data) / self.bytes_per_second)
        finally:
            writer.transport.abort()
