"""`python -m bench`: run every benchmark, write bench/results/<name>.json, print a table."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from bench import device_identity

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    RESULTS.mkdir(exist_ok=True)
    started = time.time()
    result = device_identity.run()
    result["machine"] = platform.machine()
    result["when"] = int(started)
    (RESULTS / "device_identity.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'figure':<16}{'ms/op':>12}{'heap alloc (B)':>18}")
    for name, fig in result["figures"].items():  # type: ignore[union-attr]
        print(f"{name:<16}{fig['ms']:>12.1f}{fig['heap_alloc_bytes']:>18.0f}")
    print(f"(MicroPython Unix port, heap budget {result['heap_budget_bytes']} B)")
    print(f"written: {RESULTS / 'device_identity.json'}")


if __name__ == "__main__":
    main()
