"""
CPU time of reading the longest PROXY protocol version 2 header (64 KiB of
TLVs) sent one byte at a time, as a hostile client may send it: this
checkout's L{lbproxy._proxyprotocol.HeaderReader} against another
version of the module.

    python benchmarks/proxyheader.py
    git show 58a7dea~2:src/lbproxy/_proxyprotocol.py > /tmp/before.py
    python benchmarks/proxyheader.py --against /tmp/before.py

In-process, no network; each round times one header, the figures are the
medians of C{--rounds}.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import struct
import time
from types import ModuleType
from typing import Optional


def load(path: Optional[str]) -> ModuleType:
    """
    This checkout's C{lbproxy._proxyprotocol}, or the module at C{path}.
    """
    if path is None:
        from lbproxy import _proxyprotocol

        return _proxyprotocol
    spec = importlib.util.spec_from_file_location("against", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timeHeader(module: ModuleType) -> float:
    """
    CPU seconds to read the longest version 2 header a byte at a time.
    """
    body = bytes([192, 0, 2, 1, 10, 0, 0, 1]) + struct.pack("!HH", 1, 2)
    body += bytes(65535 - len(body))
    header = module.V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, len(body)) + body
    reader = module.HeaderReader()
    began = time.process_time()
    for index in range(len(header)):
        parsed = reader.feed(header[index : index + 1])
    elapsed = time.process_time() - began
    assert parsed is not None
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", help="another version of _proxyprotocol.py")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    versions = [("this checkout", load(None))]
    if args.against:
        versions.append((args.against, load(args.against)))
    for name, module in versions:
        times = [timeHeader(module) for _ in range(args.rounds)]
        print(f"{name}: {statistics.median(times) * 1000:.1f} ms of CPU (median of {args.rounds})")


if __name__ == "__main__":
    main()
