#!/usr/bin/env python3
"""End-to-end load bench: the sidecar and Prometheus side by side on the same exporter.

For each configuration (series count N, scrape interval) it starts a synthetic exporter that
serves pre-rendered bodies (so its own cost stays negligible), then runs
  1. anomaly-sidecar with one zscore rule over every series, window 60, and
  2. Prometheus with the equivalent recording rule, (x - avg_over_time(x[W])) / stddev_over_time(x[W]),
for the same time each, and prints both and their ratios in one table:
samples evaluated per second, CPU cores (from /proc, after a warm-up), samples per CPU-second,
peak RSS, bytes on disk, and for the sidecar scrape-to-gauge latency p50/p99.

    python3 bench/load.py                       # 10k and 100k series at 1s, 60 s each
    python3 bench/load.py --series 10000,100000,1000000 --interval 1,15 --duration 120
    python3 bench/load.py --series 20000 --soak 3600 --out bench/soak   # an hour, 10% churn / 5 min
    python3 bench/load.py --series 100000 --no-prometheus --bin /tmp/old/anomaly-sidecar  # two builds
    python3 bench/load.py --series 100000 --against /tmp/old/anomaly-sidecar --rounds 5
        # the release build and another one at the same time, each on its own exporter: both
        # see the same machine noise (one after the other, runs differed by up to 20 %)
    python3 bench/load.py --discovery 1000 --pod-series 100 --interval 15
        # kubernetes_sd over one watch of a Kubernetes API served here: 1,000 pods of 100
        # series, CPU and RSS, then pods created one at a time: creation to first scrape
    python3 bench/load.py --discovery 1000 --pod-series 100 --interval 15 --warm 20
        # the same with --warmup-from a real Prometheus holding each pod's history: time and
        # CPU until every pod's first scrape was judged against its own

Needs a release build (target/release/anomaly-sidecar) and Debian's `prometheus`.
"""

import argparse
import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDECAR = os.path.join(ROOT, "target", "release", "anomaly-sidecar")
TICK = os.sysconf("SC_CLK_TCK")
NAMES = ["http_requests_in_flight", "db_query_latency_seconds", "queue_depth",
         "cache_hit_ratio", "worker_busy_threads", "upstream_latency_seconds"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render_bodies(n, variants=3, seed=7, churned=0, epoch=0):
    """`variants` bodies of n series with realistic names and 3-6 labels, unique label sets
    across names (Prometheus' rule drops __name__ and must not see duplicates). The first
    `churned` series get new ids in every `epoch` (series churn)."""
    rng = random.Random(seed)
    lines = []
    for j in range(n):
        i = j + epoch * n if j < churned else j
        name = NAMES[i % len(NAMES)]
        labels = [f'service="svc-{i % 97}"', f'instance="10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:9100"',
                  f'series_id="{i}"']
        if i % 2:
            labels.append(f'method="{["GET", "POST", "PUT"][i % 3]}"')
        if i % 3:
            labels.append(f'code="{200 + i % 5}"')
        if i % 5 == 0:
            labels.append(f'path="/api/v1/items/{i % 1000}"')
        base = 50 + 10 * rng.random()
        # Drawn here, in series order, so a churn changes only the churned series' values
        # (drawn after the sort by name, every value moved when a churned series changed name,
        # and every series fired at once).
        lines.append((name, ",".join(labels), [base + rng.gauss(0, 1) for _ in range(variants)]))
    lines.sort(key=lambda l: NAMES.index(l[0]))
    bodies = []
    for v in range(variants):
        out = []
        last = None
        for name, labels, values in lines:
            if name != last:
                out.append(f"# TYPE {name} gauge\n")
                last = name
            out.append(f"{name}{{{labels}}} {values[v]:.4f}\n")
        bodies.append("".join(out).encode())
    return bodies


class Exporter:
    def __init__(self, bodies):
        self.bodies = bodies
        self.count = 0
        exporter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = exporter.bodies[exporter.count % len(exporter.bodies)]
                exporter.count += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the scraper was stopped mid-body: the end of a run, not an error

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


def stop(proc):
    """SIGTERM, then SIGKILL after a minute: Prometheus at 1M series takes longer than that
    to shut down, and its measurements were already taken."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        print(f"pid {proc.pid} still running a minute after SIGTERM: killed", file=sys.stderr)
        proc.kill()
        proc.wait()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def metrics(port, path="/metrics"):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as r:
            return r.read().decode()
    except OSError:
        return ""


def value(text, prefix):
    """Sum of the samples whose line starts with prefix."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(prefix):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found else None


def buckets(text, name):
    out = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    return out


def quantile(before, after, q):
    b = dict(before)
    counts = [(le, c - b.get(le, 0.0)) for le, c in after]
    total = counts[-1][1] if counts else 0
    if total <= 0:
        return None
    for le, c in counts:
        if c >= q * total:
            return le
    return None


def du(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total


def write(work, name, text):
    """`text` in the file `name` under `work`; its path."""
    path = os.path.join(work, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def wait_port(port, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}")


def start_sidecar(exporter, interval, work, extra, binary=None):
    """The sidecar with one zscore rule (window 60) over every series of `exporter`; returns
    the process, its port and its data dir."""
    rules = os.path.join(work, "rules.yaml")
    with open(rules, "w") as f:
        f.write("rules:\n  - name: z\n    match: '{__name__=~\".+\"}'\n    method: zscore\n    window: 60\n")
    port = free_port()
    data = os.path.join(work, "sidecar-data")
    proc = subprocess.Popen(
        [binary or SIDECAR, "run", "--rules", rules, "--target", f"http://127.0.0.1:{exporter.port}/metrics",
         "--listen", f"127.0.0.1:{port}", "--data-dir", data, "--scrape-interval", f"{interval}s",
         "--scrape-timeout", f"{max(interval, 10)}s",
         # 1M series is ~115 MB a body, over the 64 MB default.
         "--max-scrape-bytes", str(max(64 << 20, 2 * len(exporter.bodies[0])))] + extra,
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "sidecar.log"), "w"))
    return proc, port, data


def run_sidecar(exporter, n, interval, warmup, duration, work):
    proc, port, data = start_sidecar(exporter, interval, work, ["--max-series", str(n * 2)])
    try:
        wait_port(port)
        time.sleep(warmup)
        m0 = metrics(port)
        c0, t0 = cpu_seconds(proc.pid), time.time()
        time.sleep(duration)
        c1, t1 = cpu_seconds(proc.pid), time.time()
        m1 = metrics(port)
        ev = "anomaly_sidecar_rule_evaluations_total"
        evaluated = (value(m1, ev) or 0) - (value(m0, ev) or 0)
        lat = "anomaly_sidecar_scrape_to_export_seconds"
        return {
            "samples/s": evaluated / (t1 - t0),
            "cores": (c1 - c0) / (t1 - t0),
            "peak RSS MB": peak_rss_mb(proc.pid),
            "disk MB": du(data) / 1e6,
            "latency p50 s": quantile(buckets(m0, lat), buckets(m1, lat), 0.5),
            "latency p99 s": quantile(buckets(m0, lat), buckets(m1, lat), 0.99),
        }
    finally:
        stop(proc)


def against(n, interval, warmup, duration, other, rounds):
    """The release build (A) and `other` (B) at once, each on its own exporter of the same
    bodies, `rounds` times; prints samples per CPU-second of each and A/B per round, then
    the median ratio."""
    bodies = render_bodies(n)
    builds = [SIDECAR, os.path.abspath(other)]
    ratios = []
    for r in range(rounds):
        exporters = [Exporter(bodies), Exporter(bodies)]
        procs = []
        with tempfile.TemporaryDirectory() as w1, tempfile.TemporaryDirectory() as w2:
            try:
                for binary, exporter, work in zip(builds, exporters, (w1, w2)):
                    procs.append(start_sidecar(exporter, interval, work,
                                               ["--max-series", str(n * 2)], binary))
                for _, port, _ in procs:
                    wait_port(port)
                time.sleep(warmup)
                ev = "anomaly_sidecar_rule_evaluations_total"
                before = [(cpu_seconds(p.pid), value(metrics(port), ev) or 0) for p, port, _ in procs]
                time.sleep(duration)
                after = [(cpu_seconds(p.pid), value(metrics(port), ev) or 0) for p, port, _ in procs]
            finally:
                for p, _, _ in procs:
                    stop(p)
        for e in exporters:
            e.stop()
        per = [(a[1] - b[1]) / max(a[0] - b[0], 1e-9) for a, b in zip(after, before)]
        ratios.append(per[0] / per[1] if per[1] else float("nan"))
        print(f"round {r + 1}: A {per[0]:,.0f}  B {per[1]:,.0f} samples per CPU-s  A/B {ratios[-1]:.3f}",
              flush=True)
    ratios.sort()
    print(f"A = {builds[0]}\nB = {builds[1]}\n{n:,} series @{interval}s, {rounds} rounds of "
          f"{duration:.0f} s: median A/B {ratios[len(ratios) // 2]:.3f} "
          f"(range {ratios[0]:.3f}-{ratios[-1]:.3f})")


def run_prometheus(exporter, n, interval, warmup, duration, work):
    prom = shutil.which("prometheus")
    if not prom:
        return None
    window = f"{60 * interval}s"
    sel = '{__name__=~"' + "|".join(NAMES) + '"}'
    rules = os.path.join(work, "prom-rules.yml")
    with open(rules, "w") as f:
        f.write("groups:\n  - name: zscore\n    rules:\n      - record: anomaly:zscore\n"
                f"        expr: '({sel} - avg_over_time({sel}[{window}])) / stddev_over_time({sel}[{window}])'\n")
    config = os.path.join(work, "prometheus.yml")
    with open(config, "w") as f:
        f.write(f"global:\n  scrape_interval: {interval}s\n  evaluation_interval: {interval}s\n"
                f"  scrape_timeout: {min(interval, 10)}s\nrule_files: ['{rules}']\n"
                f"scrape_configs:\n  - job_name: bench\n    static_configs:\n"
                f"      - targets: ['127.0.0.1:{exporter.port}']\n")
    port = free_port()
    data = os.path.join(work, "prom-data")
    proc = subprocess.Popen(
        [prom, f"--config.file={config}", f"--storage.tsdb.path={data}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "prometheus.log"), "w"))
    try:
        wait_port(port)
        time.sleep(warmup)
        m0 = metrics(port)
        c0, t0 = cpu_seconds(proc.pid), time.time()
        time.sleep(duration)
        c1, t1 = cpu_seconds(proc.pid), time.time()
        m1 = metrics(port)
        it = "prometheus_rule_group_iterations_total"
        missed = "prometheus_rule_group_iterations_missed_total"
        iterations = (value(m1, it) or 0) - (value(m0, it) or 0)
        skipped = (value(m1, missed) or 0) - (value(m0, missed) or 0)
        scheduled = iterations
        done = max(scheduled - skipped, 0)
        return {
            "samples/s": n * done / (t1 - t0),
            "cores": (c1 - c0) / (t1 - t0),
            "peak RSS MB": peak_rss_mb(proc.pid),
            "disk MB": du(data) / 1e6,
            "rule group s": value(m1, "prometheus_rule_group_last_duration_seconds"),
            "iterations missed": f"{int(skipped)}/{int(scheduled)}",
        }
    finally:
        stop(proc)


def soak(n, interval, seconds, churn_every, churn_frac, out_prefix):
    """Runs the sidecar alone for `seconds` with `churn_frac` of the series replaced every
    `churn_every` seconds (retention 2 × churn_every), sampling RSS every 10 s and disk every
    0.25 s (so a compaction's peak is caught, not just its steady state) into CSV, and a PNG
    when matplotlib is importable."""
    work = tempfile.mkdtemp()
    churned = int(n * churn_frac)
    exporter = Exporter(render_bodies(n, variants=2, churned=churned))
    proc, port, data = start_sidecar(
        exporter, interval, work, ["--max-series", str(n * 4), "--retention", f"{2 * churn_every}s"])
    rows = []
    start = time.time()
    epoch = 0
    try:
        wait_port(port)
        while time.time() - start < seconds:
            peak = 0
            until = time.time() + 10
            while time.time() < until:
                time.sleep(0.25)
                peak = max(peak, du(data))
            t = time.time() - start
            if churned and t // churn_every > epoch:
                epoch = int(t // churn_every)
                exporter.bodies = render_bodies(n, variants=2, churned=churned, epoch=epoch)
            with open(f"/proc/{proc.pid}/status") as f:
                rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024
            rows.append((t, rss, du(data) / 1e6, peak / 1e6))
            print(f"{t:7.0f} s  RSS {rss:7.1f} MB  disk {rows[-1][2]:7.1f} MB (peak {rows[-1][3]:7.1f})",
                  file=sys.stderr, flush=True)
    finally:
        stop(proc)
        exporter.stop()
        shutil.rmtree(work, ignore_errors=True)
    with open(out_prefix + ".csv", "w") as f:
        f.write("seconds,rss_mb,disk_mb,disk_peak_mb\n")
        for r in rows:
            f.write(f"{r[0]:.0f},{r[1]:.1f},{r[2]:.2f},{r[3]:.2f}\n")
    raw = 8 * 60 * n / 1e6
    first = [r for r in rows if r[0] >= 300][:1] or rows[:1]
    disk = sorted(r[2] for r in rows)
    peak = max(r[3] for r in rows)
    print(f"soak {n:,} series @{interval}s, {churned:,} replaced every {churn_every}s: "
          f"RSS {first[0][1]:.0f} MB at {first[0][0]:.0f} s, {rows[-1][1]:.0f} MB at {rows[-1][0]:.0f} s "
          f"(max {max(r[1] for r in rows):.0f}); disk median {disk[len(disk) // 2]:.1f} MB = "
          f"{disk[len(disk) // 2] / raw:.2f}x the raw windows ({raw:.1f} MB), "
          f"peak (every 0.25 s, compactions included) {peak:.1f} MB = {peak / raw:.2f}x")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.plot([r[0] / 60 for r in rows], [r[1] for r in rows], label="RSS MB")
        ax.plot([r[0] / 60 for r in rows], [r[2] for r in rows], label="disk MB")
        ax.plot([r[0] / 60 for r in rows], [r[3] for r in rows], label="disk MB, peak of each 10 s", lw=0.6)
        ax.set_xlabel("minutes")
        ax.set_title(f"anomaly-sidecar, {n:,} series @{interval}s, {int(churn_frac * 100)}% churn every {churn_every}s")
        ax.legend()
        fig.savefig(out_prefix + ".png", dpi=100)
        print(f"plot: {out_prefix}.png")
    except ImportError:
        print("no matplotlib: CSV only (pip install matplotlib for the PNG)")


class PodExporters:
    """One asyncio loop serving `n` loopback exporters (a port per pod) of the same body, and
    recording when each port was first scraped."""

    def __init__(self, body):
        import asyncio
        self.body = body
        self.first = {}
        self.ports = []
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def add(self, n):
        import asyncio
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n").encode()

        async def start():
            out = []
            for _ in range(n):
                box = {}

                async def handle(reader, writer, box=box):
                    try:
                        await reader.readuntil(b"\r\n\r\n")
                        self.first.setdefault(box["port"], time.time())
                        writer.write(head + self.body)
                        await writer.drain()
                    except (asyncio.IncompleteReadError, ConnectionError):
                        pass
                    finally:
                        writer.close()

                server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=64)
                box["port"] = server.sockets[0].getsockname()[1]
                out.append(box["port"])
            return out

        ports = asyncio.run_coroutine_threadsafe(start(), self.loop).result()
        self.ports.extend(ports)
        return ports


class FakeKubernetes:
    """The pods list and one watch stream of namespace `bench`, in the API's JSON."""

    def __init__(self):
        self.pods = []
        self.rv = 1000
        self.watchers = []
        self.lock = threading.Lock()
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                if "watch=true" in self.path or "watch=1" in self.path:
                    return self.watch()
                with api.lock:
                    body = json.dumps({"kind": "PodList", "apiVersion": "v1",
                                       "metadata": {"resourceVersion": str(api.rv)},
                                       "items": api.pods}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def watch(self):
                import queue
                q = queue.Queue()
                with api.lock:
                    api.watchers.append(q)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    while True:
                        line = (q.get() + "\n").encode()
                        self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def pod(self, i, port, name=None):
        with self.lock:
            self.rv += 1
            rv = self.rv
        return {"kind": "Pod", "apiVersion": "v1",
                "metadata": {"name": name or f"api-{i}", "namespace": "bench", "uid": f"uid-{i}",
                             "resourceVersion": str(rv), "labels": {"app": "api"},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                                                  "name": "api", "uid": "sts", "controller": True}]},
                "spec": {"nodeName": f"node-{i % 10}", "containers": [
                    {"name": "api", "ports": [{"name": "metrics", "containerPort": port}]}]},
                "status": {"phase": "Running", "podIP": "127.0.0.1"}}

    def add(self, pod):
        """Adds a pod and tells the watches; returns when it was sent."""
        line = json.dumps({"type": "ADDED", "object": pod})
        with self.lock:
            self.pods.append(pod)
            for q in self.watchers:
                q.put(line)
        return time.time()

    def targets_file(self, work):
        """A --targets-file of one kubernetes_sd entry over this API's pods."""
        return write(work, "targets.yml",
                     "targets:\n  - kubernetes_sd:\n      role: pod\n      namespaces: [bench]\n"
                     f"      selector: app=api\n      port: metrics\n      kubeconfig: {self.kubeconfig(work)}\n")

    def kubeconfig(self, work):
        path = os.path.join(work, "kubeconfig")
        with open(path, "w") as f:
            f.write(f"apiVersion: v1\nkind: Config\nclusters:\n- name: b\n  cluster:\n"
                    f"    server: http://127.0.0.1:{self.port}\ncontexts:\n- name: b\n"
                    f"  context:\n    cluster: b\n    user: b\n    namespace: bench\n"
                    f"current-context: b\nusers:\n- name: b\n  user:\n    token: t\n")
        return path


def first_alert(port, pod, since, timeout):
    """When /api/v1/alerts first lists an alert of `pod` (polled every 5 ms), else inf."""
    while time.time() - since < timeout:
        alerts = json.loads(metrics(port, "/api/v1/alerts"))["data"]["alerts"]
        if any(a["labels"].get("pod") == pod for a in alerts):
            return time.time()
        time.sleep(0.005)
    return float("inf")


def discovery(pods, per_pod, interval, warmup, duration, created):
    """kubernetes_sd over `pods` pods of `per_pod` series each, then `created` more pods one
    at a time: CPU, RSS, and the time from each creation to its first scrape and to its first
    evaluation (a threshold rule on every pod's `bench_pod_ready 1` that only the created
    pods' names match: it fires at the first evaluation of their series)."""
    body = render_bodies(per_pod, variants=1)[0] + b"bench_pod_ready 1\n"
    exporters = PodExporters(body)
    api = FakeKubernetes()
    for i, port in enumerate(exporters.add(pods)):
        api.pods.append(api.pod(i, port))
    with tempfile.TemporaryDirectory() as work:
        targets = api.targets_file(work)
        rules = os.path.join(work, "rules.yaml")
        with open(rules, "w") as f:
            f.write("rules:\n  - name: z\n    match: '{__name__=~\".+\"}'\n    method: zscore\n    window: 60\n"
                    "  - name: first_evaluation\n    match: 'bench_pod_ready{pod=~\"api-new-.+\"}'\n"
                    "    method: threshold\n    threshold: 0\n")
        port = free_port()
        t0 = time.time()
        proc = subprocess.Popen(
            [SIDECAR, "run", "--rules", rules, "--targets-file", targets, "--listen", f"127.0.0.1:{port}",
             "--data-dir", os.path.join(work, "data"), "--scrape-interval", f"{interval}s",
             "--max-series", str(per_pod * 2)],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "sidecar.log"), "w"))
        try:
            wait_port(port)
            while len(exporters.first) < pods and time.time() - t0 < 300:
                time.sleep(0.1)
            all_scraped = time.time() - t0
            time.sleep(warmup)
            ev = "anomaly_sidecar_rule_evaluations_total"
            lat = "anomaly_sidecar_scrape_to_export_seconds"
            m0 = metrics(port)
            c0, w0 = cpu_seconds(proc.pid), time.time()
            time.sleep(duration)
            c1, w1 = cpu_seconds(proc.pid), time.time()
            m1 = metrics(port)
            lags, evals = [], []
            for j, p in enumerate(exporters.add(created)):
                name = f"api-new-{j}"
                at = api.add(api.pod(pods + j, p, name))
                fired = first_alert(port, name, at, 3 * interval + 30)
                lags.append(exporters.first.get(p, float("inf")) - at)
                evals.append(fired - at)
                time.sleep(0.5)
            rss = peak_rss_mb(proc.pid)
        finally:
            stop(proc)
    lags.sort()
    evals.sort()
    evaluated = (value(m1, ev) or 0) - (value(m0, ev) or 0)
    cores = (c1 - c0) / (w1 - w0)
    print(f"\nkubernetes_sd: {pods:,} pods x {per_pod} series = {pods * per_pod:,} series over one "
          f"watch (and each pod's bench_pod_ready), scraped every {interval}s, one zscore rule "
          f"(window 60) on every series")
    print(f"  all {pods:,} pods scraped {all_scraped:.1f} s after start")
    print(f"  {duration:.0f} s measured: {evaluated / (w1 - w0):,.0f} samples/s on {cores:.3f} cores "
          f"({evaluated / (w1 - w0) / max(cores, 1e-9):,.0f} samples per CPU-s), peak RSS {rss:.0f} MB")
    print(f"  scrape to gauges: p50 {quantile(buckets(m0, lat), buckets(m1, lat), 0.5)} s, "
          f"p99 {quantile(buckets(m0, lat), buckets(m1, lat), 0.99)} s")
    print(f"  {created} pods created one at a time: creation to first scrape median "
          f"{lags[len(lags) // 2] * 1000:.0f} ms, max {lags[-1] * 1000:.0f} ms; to first evaluation "
          f"(its alert in /api/v1/alerts) median {evals[len(evals) // 2] * 1000:.0f} ms, "
          f"max {evals[-1] * 1000:.0f} ms")


def warm_history(path, body, pods, window, interval, end):
    """OpenMetrics history of every pod's series for `window + 1` scrapes before `end`, under
    the labels the usual relabelling gives Prometheus' copy (namespace, pod, container, job;
    no workload or node), a family at a time as promtool reads it."""
    families = {}
    for line in body.decode().splitlines():
        if line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        name, labels = series[:-1].split("{", 1)
        families.setdefault(name, []).append((labels, float(value)))
    times = [end - interval * k for k in range(window, -1, -1)]
    with open(path, "w") as f:
        for name, rows in families.items():
            f.write(f"# TYPE {name} gauge\n")
            for i in range(pods):
                own = f'container="api",job="pods",namespace="bench",pod="api-{i}"'
                for labels, v in rows:
                    head = f"{name}{{{labels},{own}}} "
                    f.writelines(f"{head}{v + (k % 3 - 1) * 0.5:.4f} {t}\n"
                                 for k, t in enumerate(times))
        f.write("# EOF\n")


def discovery_warm(pods, per_pod, interval, window, duration):
    """kubernetes_sd over `pods` pods with --warmup-from: a real Prometheus holds `window + 1`
    scrapes of every pod's series (backfilled with promtool) under its namespace and pod
    labels. Time and CPU from the start until every pod's first scrape was judged against its
    own history, the series found, then the steady CPU."""
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not prometheus or not promtool:
        sys.exit("--warm needs Debian's prometheus (prometheus and promtool)")
    body = render_bodies(per_pod, variants=1)[0]
    exporters = PodExporters(body)
    api = FakeKubernetes()
    for i, port in enumerate(exporters.add(pods)):
        api.pods.append(api.pod(i, port))
    with tempfile.TemporaryDirectory() as work:
        om = os.path.join(work, "history.om")
        warm_history(om, body, pods, window, interval, int(time.time()) - 1)
        tsdb = os.path.join(work, "tsdb")
        print(f"== promtool: {pods * per_pod * (window + 1):,} samples of history ...",
              file=sys.stderr, flush=True)
        subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", om, tsdb],
                       check=True, stdout=subprocess.DEVNULL)
        os.remove(om)
        config = write(work, "prometheus.yml", "global: {}\n")
        pport = free_port()
        prom = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
                                 f"--web.listen-address=127.0.0.1:{pport}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        targets = api.targets_file(work)
        rules = write(work, "rules.yaml", f"rules:\n  - name: z\n    match: '{{__name__=~\".+\"}}'\n"
                      f"    method: zscore\n    window: {window}\n")
        port = free_port()
        log = os.path.join(work, "sidecar.log")
        proc = None
        try:
            wait_port(pport)
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{pport}/-/ready")
                    break
                except OSError:
                    time.sleep(0.2)
            t0 = time.time()
            proc = subprocess.Popen(
                [SIDECAR, "run", "--rules", rules, "--targets-file", targets, "--listen", f"127.0.0.1:{port}",
                 "--data-dir", os.path.join(work, "data"), "--scrape-interval", f"{interval}s",
                 "--max-series", str(per_pod * 2), "--warmup-from", f"http://127.0.0.1:{pport}",
                 "--warmup-timeout", "120s"],
                stdout=subprocess.DEVNULL, stderr=open(log, "w"))
            warmed = []
            while time.time() - t0 < 300:
                with open(log) as f:
                    warmed = re.findall(r"history for (\d+) of (\d+) series \((\d+) missing, (\d+)", f.read())
                if len(warmed) >= pods:
                    break
                time.sleep(0.05)
            all_warmed, cpu_warm = time.time() - t0, cpu_seconds(proc.pid)
            c0, w0 = cpu_seconds(proc.pid), time.time()
            time.sleep(duration)
            c1, w1 = cpu_seconds(proc.pid), time.time()
            rss = peak_rss_mb(proc.pid)
        finally:
            if proc:
                stop(proc)
            stop(prom)
    got, asked, missing, several = (sum(int(w[k]) for w in warmed) for k in range(4))
    print(f"\nkubernetes_sd with --warmup-from: {pods:,} pods x {per_pod} series, each pod's history "
          f"({window + 1} scrapes at {interval}s) in a real Prometheus under its namespace and pod")
    print(f"  {len(warmed):,} pods' first scrapes judged against history {all_warmed:.1f} s after start, "
          f"on {cpu_warm:.1f} CPU-s; history for {got:,} of {asked:,} series ({missing:,} missing, "
          f"{several:,} matched several)")
    print(f"  then {duration:.0f} s: {(c1 - c0) / (w1 - w0):.3f} cores, peak RSS {rss:.0f} MB")


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", default="10000,100000")
    ap.add_argument("--interval", default="1", help="seconds, comma-separated")
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=None, help="default: 20 s or two intervals")
    ap.add_argument("--soak", type=float, default=0,
                    help="instead: run the sidecar alone this many seconds (e.g. 3600) and plot RSS and disk")
    ap.add_argument("--churn-every", type=int, default=300)
    ap.add_argument("--churn", type=float, default=0.1, help="share of series replaced each time")
    ap.add_argument("--out", default="soak", help="CSV/PNG path prefix for --soak")
    ap.add_argument("--bin", default=None, help="the sidecar binary (default: the release build)")
    ap.add_argument("--no-prometheus", action="store_true",
                    help="the sidecar alone (to compare two builds of it)")
    ap.add_argument("--against", default=None,
                    help="another build: run it and the release build (or --bin) at once, "
                         "each on its own exporter, and print their ratio")
    ap.add_argument("--rounds", type=int, default=3, help="with --against")
    ap.add_argument("--discovery", type=int, default=0,
                    help="instead: this many pods found by kubernetes_sd over one watch")
    ap.add_argument("--pod-series", type=int, default=100, help="with --discovery")
    ap.add_argument("--created", type=int, default=20,
                    help="with --discovery: pods created one at a time after the measurement")
    ap.add_argument("--warm", type=int, default=0, metavar="WINDOW",
                    help="with --discovery: instead, a zscore rule of this window warm-started "
                         "from a real Prometheus holding every pod's history (--warmup-from)")
    args = ap.parse_args()
    if args.bin:
        global SIDECAR
        SIDECAR = os.path.abspath(args.bin)
    if not os.path.exists(SIDECAR):
        sys.exit("build first: cargo build --release")
    if args.against:
        n = int(args.series.split(",")[0])
        interval = int(args.interval.split(",")[0])
        warmup = args.warmup if args.warmup is not None else max(20, 2 * interval)
        against(n, interval, warmup, args.duration, args.against, args.rounds)
        return
    if args.discovery:
        interval = int(args.interval.split(",")[0])
        if args.warm:
            discovery_warm(args.discovery, args.pod_series, interval, args.warm, args.duration)
            return
        warmup = args.warmup if args.warmup is not None else max(20, 2 * interval)
        discovery(args.discovery, args.pod_series, interval, warmup, args.duration, args.created)
        return
    if args.soak:
        n = int(args.series.split(",")[0])
        interval = int(args.interval.split(",")[0])
        soak(n, interval, args.soak, args.churn_every, args.churn, args.out)
        return
    rows = []
    for n in [int(x) for x in args.series.split(",")]:
        bodies = render_bodies(n, variants=2 if n >= 1_000_000 else 3)
        exporter = Exporter(bodies)
        for interval in [int(x) for x in args.interval.split(",")]:
            warmup = args.warmup if args.warmup is not None else max(20, 2 * interval)
            with tempfile.TemporaryDirectory() as work:
                print(f"== {n:,} series @{interval}s: sidecar ...", file=sys.stderr, flush=True)
                s = run_sidecar(exporter, n, interval, warmup, args.duration, work)
                p = None
                if not args.no_prometheus:
                    print(f"== {n:,} series @{interval}s: prometheus ...", file=sys.stderr,
                          flush=True)
                    p = run_prometheus(exporter, n, interval, warmup, args.duration, work)
            rows.append((n, interval, s, p))
        exporter.stop()
    print(f"\nbody size per scrape ~{len(bodies[0]) / 1e6:.1f} MB at {n:,} series; "
          f"{args.duration:.0f} s measured after the warm-up; 60-sample window")
    keys = ["samples/s", "cores", "samples per CPU-s", "peak RSS MB", "disk MB",
            "latency p50 s", "latency p99 s", "rule group s", "iterations missed"]
    print(f"{'series':>9} {'every':>5} {'measure':<18} {'sidecar':>12} {'prometheus':>12} {'ratio':>8}")
    for n, interval, s, p in rows:
        for side in (s, p):
            if side and side.get("cores"):
                side["samples per CPU-s"] = side["samples/s"] / side["cores"]
        for k in keys:
            sv, pv = s.get(k), (p or {}).get(k)
            if sv is None and pv is None:
                continue
            ratio = "-"
            if isinstance(sv, (int, float)) and isinstance(pv, (int, float)) and pv:
                ratio = f"{sv / pv:.3g}"
            print(f"{n:>9,} {interval:>4}s {k:<18} {fmt(sv):>12} {fmt(pv):>12} {ratio:>8}")


if __name__ == "__main__":
    main()
