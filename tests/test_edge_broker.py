"""The node app against a real RabbitMQ (Debian's rabbitmq-server): every message it publishes arrives.

The fixture starts a private broker on 127.0.0.1 (own ports, own epmd port, data and logs in a temp dir), with
the exchanges pywaggle uses on a node: it publishes to `to-validator` with the message scope as routing key
and subscribes on `data.topic`. The test replays a few scans of the synthetic raw folder and reads every
message back from a queue bound to `to-validator`.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.system_programs import needs_program

BOOT_S = 90  # a cold broker boots in 5-20 s on 2 busy cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(port: int):
    import pika

    params = pika.ConnectionParameters(host="127.0.0.1", port=port, credentials=pika.PlainCredentials("guest", "guest"),
                                       connection_attempts=1, socket_timeout=2.0)
    return pika.BlockingConnection(params)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """(amqp port, setup channel factory) of a private broker; stopped by its process group at the end."""
    program = needs_program("rabbitmq-server", package="rabbitmq-server")
    # the real start script, not the wrapper that switches to the rabbitmq user (root owns the temp dir)
    direct = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    program = str(direct) if direct.exists() else program
    home = tmp_path_factory.mktemp("rabbitmq")
    amqp, dist, epmd = free_port(), free_port(), free_port()
    (home / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{amqp}\nloopback_users.guest = true\n")
    (home / "enabled_plugins").write_text("[].\n")
    env = {**os.environ, "HOME": str(home), "RABBITMQ_NODENAME": f"sagecast{amqp}@localhost",
           "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(amqp), "RABBITMQ_DIST_PORT": str(dist),
           "ERL_EPMD_PORT": str(epmd), "ERL_EPMD_ADDRESS": "127.0.0.1", "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq"),
           "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"), "RABBITMQ_MNESIA_BASE": str(home / "db"),
           "RABBITMQ_LOG_BASE": str(home / "log"), "RABBITMQ_PID_FILE": str(home / "rabbit.pid")}
    log = open(home / "server.out", "wb")
    proc = subprocess.Popen([program], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + BOOT_S
        while True:
            try:
                conn = connect(amqp)
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"rabbitmq-server did not come up on 127.0.0.1:{amqp}: "
                                f"{(home / 'server.out').read_text()[-2000:]}")
                time.sleep(0.5)
        with conn, conn.channel() as ch:
            for exchange in ("to-validator", "data.topic"):  # as pywaggle's node configuration declares them
                ch.exchange_declare(exchange, exchange_type="topic", durable=True)
        yield amqp
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the start script and the Erlang VM it runs: our process group
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        epmd_bin = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        subprocess.run([epmd_bin, "-port", str(epmd), "-kill"], env=env, capture_output=True, timeout=10)
        log.close()


def first_scans(tiny_raw, tmp_path, n=3):
    """`n` consecutive hourly scans from 16:00 UTC (late morning at US nodes: one local day, so each scan after
    the first has its context), copied into their own raw folder."""
    from edge_runtime.scans import scans_in, stored_files

    scans = [s for s in scans_in(stored_files(tiny_raw), 60.0) if s.time_ns // 3_600_000_000_000 % 24 >= 16][:n]
    raw = tmp_path / "raw"
    for scan in scans:
        for files in scan.files.values():
            for kind, path in files.items():
                (raw / "W056" / kind).mkdir(parents=True, exist_ok=True)
                shutil.copy(path, raw / "W056" / kind / path.name)
    return scans, raw


def listen(port: int):
    """A queue bound to pywaggle's publishing exchange, declared before the app starts so nothing is missed."""
    conn = connect(port)
    ch = conn.channel()
    queue = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(queue, "to-validator", "#")
    return conn, ch, queue


def received(ch, queue) -> list:
    import wagglemsg

    msgs = []
    while (got := ch.basic_get(queue, auto_ack=True))[0] is not None:
        msgs.append(wagglemsg.load(got[2]))
    return msgs


def app_env(port: int, **extra) -> dict:
    env = {**os.environ, "WAGGLE_PLUGIN_HOST": "127.0.0.1", "WAGGLE_PLUGIN_PORT": str(port),
           "WAGGLE_PLUGIN_USERNAME": "guest", "WAGGLE_PLUGIN_PASSWORD": "guest", **extra}
    env.pop("PYWAGGLE_LOG_DIR", None)
    return env


def check_messages(msgs, scans, model):
    """Every expected message of `scans`, and nothing else: names, values in [0, 1], string meta, timestamps."""
    manifest = json.loads((model / "manifest.json").read_text())
    P, H = len(manifest["presets"]), len(manifest["horizons_min"])
    times = [s.time_ns for s in scans]
    now = [m for m in msgs if m.name == "sagecast.cloud.nowcast"]
    fc = [m for m in msgs if m.name == "sagecast.cloud.forecast"]
    assert sorted({m.timestamp for m in msgs}) == sorted(times)  # timestamp = the scan's time, to the ns
    assert len(now) == sum(len(s.files) + 1 for s in scans)  # each preset present + "all"
    # the first scan has no context; the others forecast every preset and the whole sky at every horizon
    assert len(fc) == (len(scans) - manifest["context_scans"] + 1) * H * (P + 1)
    assert all(0.0 <= m.value <= 1.0 for m in now + fc)
    assert all(isinstance(v, str) for m in msgs for v in m.meta.values())
    assert {m.meta["horizon_min"] for m in fc} == {f"{h:g}" for h in manifest["horizons_min"]}
    assert {m.meta["position"] for m in now} == {"all", *map(str, manifest["presets"])}
    for name in ("preprocess", "encode", "forecast"):
        assert len([m for m in msgs if m.name == f"sagecast.time.{name}" and m.value >= 0]) == len(scans)
    assert len(msgs) == len(now) + len(fc) + 3 * len(scans)


def test_replay_through_a_real_broker_delivers_every_message(broker, tiny_edge_model, tiny_raw, tmp_path):
    scans, raw = first_scans(tiny_raw, tmp_path)
    conn, ch, queue = listen(broker)
    with conn:
        run = subprocess.run([sys.executable, "-m", "edge_runtime", "--model", str(tiny_edge_model), "--source",
                              "dir", "--raw", str(raw)], env=app_env(broker), capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr
        msgs = received(ch, queue)
    check_messages(msgs, scans, tiny_edge_model)


def test_subscribe_path_fetches_uploads_from_storage(broker, tiny_edge_model, tiny_raw, tmp_path):
    """The scanner's upload records (as SAGE stores them) go to the subscriber's topic exchange through a small
    stand-in for the node's upload agent; the app fetches each file from the SAGE double behind HTTP Basic."""
    import pika
    import wagglemsg

    from data.sage.query import load_query_csv
    from tests.sage_double import SageDouble

    scans, _ = first_scans(tiny_raw, tmp_path)
    times = {int(p.name.split("-")[0]) for s in scans for files in s.files.values() for p in files.values()}
    records = pd.concat([load_query_csv(f) for f in sorted((tiny_raw / "W056" / "sage_meta").glob("*.csv"))])
    records = records[(records["name"] == "upload") & records["timestamp"].map(lambda t: t.value in times)]
    uploads = [wagglemsg.Message(name="upload", value=r["value"], timestamp=r["timestamp"].value,
                                 meta={k[5:]: str(v) for k, v in r.items() if k.startswith("meta.") and v == v})
               for _, r in records.sort_values("timestamp").iterrows()]
    conn, ch, queue = listen(broker)
    with conn, SageDouble(root=tiny_raw, user="me", token="secret") as double:
        app = subprocess.Popen([sys.executable, "-m", "edge_runtime", "--model", str(tiny_edge_model), "--source",
                                "subscribe", "--storage-url", double.url, "--flush-after-s", "3", "--max-scans",
                                str(len(scans))], env=app_env(broker, SAGE_USER="me", SAGE_TOKEN="secret"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            with connect(broker) as agent, agent.channel() as out:
                out.confirm_delivery()
                deadline = time.monotonic() + 60
                while True:  # mandatory + confirms: refused until the app's subscription queue is bound
                    try:
                        out.basic_publish("data.topic", "upload", wagglemsg.dump(uploads[0]), mandatory=True)
                        break
                    except pika.exceptions.UnroutableError:
                        assert time.monotonic() < deadline and app.poll() is None, "the app never subscribed"
                        time.sleep(0.3)
                for msg in uploads[1:]:
                    out.basic_publish("data.topic", "upload", wagglemsg.dump(msg), mandatory=True)
            _, err = app.communicate(timeout=240)
        finally:
            app.kill()
        assert app.returncode == 0, err
        msgs = received(ch, queue)
    check_messages(msgs, scans, tiny_edge_model)
