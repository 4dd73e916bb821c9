"""
Where lbproxy's time goes under load: py-spy samples a live lbproxy while
wrk drives it, and the samples are summed by function.

    python benchmarks/profile_live.py                  # CPython, /tiny, 10 s
    python benchmarks/profile_live.py --size 100k --seconds 20
    python benchmarks/profile_live.py --python /path/to/pypy3 --no-spy  # PyPy
    python benchmarks/profile_live.py --no-spy --src /tmp/old/src  # A/B runs
    python benchmarks/profile_live.py --size https-new  # TLS handshakes

It starts an nginx backend and one lbproxy, as benchmarks/run.py does
(proxy on CPU 0, wrk and the backend on CPU 1, loopback only), records
with C{py-spy record -f raw}, and prints two lists: the functions where
samples were taken (self time) and the functions on the stack (total
time), each as a share of all samples.  Every process is stopped by its
PID at the end.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402


def frameName(frame: str) -> str:
    """
    C{function (file.py)} for one py-spy frame, C{function (path/file.py:line)}:
    samples of the same function at different lines count together.
    """
    function, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0] if ":" in where else where.rstrip(")")
    return f"{function} ({path.rsplit('/', 1)[-1]})"


def summarise(raw: Path, top: int) -> str:
    """
    Sum py-spy's raw (collapsed stack) output by function.
    """
    selfTime: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = [frameName(f) for f in stack.split(";")]
        selfTime[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    out = [f"{samples} samples"]
    for title, counter in (("self", selfTime), ("total", total)):
        out.append(f"\n-- {title} --")
        for name, n in counter.most_common(top):
            out.append(f"{100.0 * n / samples:6.1f}%  {name}")
    return "\n".join(out)


def cpuSeconds(pid: int) -> tuple[float, float]:
    """
    The user and system CPU seconds process C{pid} has used.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size", default="tiny", choices=sorted([*bench.SIZES, *bench.HTTPS_SIZES])
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--no-spy", action="store_true", help="only measure req/s")
    parser.add_argument(
        "--src", help="run the lbproxy found in this src/ folder (for A/B runs)"
    )
    options = parser.parse_args()
    bench.ensureTools(install=True)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    workdir = Path(tempfile.mkdtemp(prefix="lbproxy-profile-"))
    procs = bench.Processes()
    try:
        backend = bench.freePort()
        p = procs.start(
            "backend",
            ["nginx", "-c", str(bench.backendConfig(workdir, backend))],
            bench.LOAD_CPU,
            workdir,
        )
        bench.waitForPort(backend, p, "backend", workdir)
        port = bench.freePort()
        tls = None
        headers: tuple[str, ...] = ()
        if options.size in bench.HTTPS_SIZES:
            path, headers = bench.HTTPS_SIZES[options.size]
            tls = (bench.freePort(), *bench.benchCertificate(workdir))
            url = f"https://127.0.0.1:{tls[0]}{path}"
        else:
            url = f"http://127.0.0.1:{port}{bench.SIZES[options.size]}"
        config = bench.lbproxyConfig(workdir, "lbproxy", port, backend, 1, tls=tls)
        p = procs.start(
            "lbproxy",
            bench.twistdArgv(options.python, "lbproxy", config, workdir),
            bench.PROXY_CPU,
            workdir,
            env=dict(os.environ, PYTHONPATH=options.src) if options.src else None,
        )
        bench.waitForPort(port, p, "lbproxy", workdir)
        if tls is not None:
            bench.waitForPort(tls[0], p, "lbproxy", workdir)
        bench.runWrk(url, 3, options.connections, headers)  # warm-up
        raw = workdir / "profile.txt"
        recorder = None
        if not options.no_spy:
            recorder = subprocess.Popen(
                [spy, "record", "-r", "250", "-f", "raw", "-o", str(raw),
                 "-d", str(int(options.seconds)), "-p", str(p.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)
        user, system = cpuSeconds(p.pid)
        result = bench.runWrk(url, options.seconds, options.connections, headers)
        user2, system2 = cpuSeconds(p.pid)
        count = max(result["requests"], 1)
        print(
            f"{options.size}: {result['rps']:.0f} req/s, p50 {result['p50']:.2f} ms, "
            f"p99 {result['p99']:.2f} ms, errors {result['errors']:.0f}; CPU per "
            f"request {1e6 * (user2 - user) / count:.1f} µs user + "
            f"{1e6 * (system2 - system) / count:.1f} µs system"
            + (" (while sampled)" if recorder else "")
        )
        if recorder is not None:
            recorder.wait(options.seconds + 30)
            print(summarise(raw, options.top))
    finally:
        procs.stopAll()


if __name__ == "__main__":
    main()
