"""Running one pe-export command as its own process: wall time, exit code and the largest resident
set any process of its tree reached, as the kernel records it (os.wait4's ru_maxrss, which is what
`/usr/bin/time -v` prints), so that no transient peak between two samples is missed; and, since
processes that run at the same time add up, the whole tree's resident sum sampled every 50 ms."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from pathlib import Path

from pe_export.memory import release_memory
from pe_export.pipeline import Plan
from pe_export.precision.profiles import cpu_profile, find_profile
from pe_export.processes import process_tree
from pe_export.source import ModelSource

CLI = [sys.executable, "-m", "pe_export.cli"]
DEFAULT_PROFILES = {"PE-Lang-L14-448": "pe-lang-l14-datacenter"}  # L14's int8 is made from its datacenter profile


def run_measured(args: list[str]) -> dict:
    """Run `pe-export ARGS`: {"seconds", "code", "max_rss_gib" (its largest process), "tree_rss_gib"
    (the sampled peak of its processes together, never below the largest), "error" (its last stderr line)}."""
    start = time.perf_counter()
    process = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    tree_peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            tree_peak[0] = max(tree_peak[0], tree_rss(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stderr = process.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(process.pid, 0)
    done.set()
    sampler.join()
    code = process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    largest = usage.ru_maxrss / 2**20
    return {"seconds": round(time.perf_counter() - start, 1), "code": code, "max_rss_gib": round(largest, 2),
            "tree_rss_gib": round(max(largest, tree_peak[0] / 2**30), 2),
            "error": (stderr.strip().splitlines() or [""])[-1] if code else ""}



def tree_rss(root: int) -> int:
    """Bytes resident now in `root` and all its descendants: for a server's tree, sampled under load
    (wait4 only reports a process tree's peak once it has ended)."""
    return sum(process_tree(root).values())


def made_artifact(variant: str, precision: str, profile_name: str | None) -> Path:
    """A random-weights artifact of the variant at the precision, made or reused (L14: from its datacenter
    profile, others: the CPU profile); the torch weights are freed before anything is timed."""
    name = profile_name or DEFAULT_PROFILES.get(variant)
    profile = find_profile(name) if name else cpu_profile(variant)
    plan = Plan(ModelSource(variant, random_init=True), profile, lambda step: print(f"  {step}", flush=True))
    path = plan.precision(precision).path
    del plan
    release_memory()
    return path
