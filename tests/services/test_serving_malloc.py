"""mtopt.serving.malloc: fixed glibc thresholds stop the page faults of repeated big allocations."""

import json
import platform
import subprocess
import sys

import pytest

from mtopt.serving.malloc import tune_malloc

# A child process (malloc settings are process-wide): 50 times, build four 3 MiB buffers (as a
# sample batch's arrays and its serialised message are), touch them and free them all; report the
# minor page faults that took once warmed up.
_PROBE = """
import json, resource, sys
from mtopt.serving.malloc import tune_malloc
tuned = tune_malloc(32 << 20, 64 << 20) if sys.argv[1] == "tuned" else None
def churn(n):
    for _ in range(n):
        bufs = [bytearray(3 << 20) for _ in range(4)]  # zero-filled: every page is touched
        del bufs
churn(5)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn(50)
print(json.dumps({"tuned": tuned, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(mode):
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_tuned_thresholds_remove_page_faults_of_repeated_big_buffers():
    default, tuned = _probe("default"), _probe("tuned")
    assert tuned["tuned"] is True
    # glibc's default: freeing the four returns the heap top to the kernel (it exceeds the trim
    # threshold, twice the largest block), so every round faults ~3,000 fresh pages in again.
    assert default["faults"] > 50 * 1000, default
    assert tuned["faults"] < 50 * 20, tuned


# A child process: six threads allocate at once (as log_replay's io_workers decode episodes);
# glibc's malloc_stats() then lists one "Arena N:" block per arena on stderr.
_ARENAS = """
import ctypes, ctypes.util, sys, threading
from mtopt.serving.malloc import tune_malloc
tuned = tune_malloc(0, 0, arena_max=int(sys.argv[1]))
barrier, held = threading.Barrier(6), []
def work():
    barrier.wait()
    held.append([bytearray(1 << 14) for _ in range(50)])
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(tuned, flush=True)
ctypes.CDLL(ctypes.util.find_library("c")).malloc_stats()
"""


def _arenas(arena_max):
    out = subprocess.run([sys.executable, "-c", _ARENAS, str(arena_max)], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "True"
    return sum(line.startswith("Arena ") for line in out.stderr.splitlines())


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_arena_cap_keeps_threads_in_few_arenas():
    assert _arenas(0) >= 4  # glibc's default: a fresh arena for most threads
    assert _arenas(2) <= 2


@pytest.mark.parametrize("mmap_bytes,trim_bytes,arena_max", [(-1, 0, 0), ((32 << 20) + 1, 0, 0), (1 << 20, -5, 0), (0, 0, -1)])
def test_out_of_range_settings_are_rejected(mmap_bytes, trim_bytes, arena_max):
    with pytest.raises(ValueError, match="threshold|arena"):
        tune_malloc(mmap_bytes, trim_bytes, arena_max)
