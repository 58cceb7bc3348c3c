"""forked.run_forked: results in item order, shared state inherited, thread count set, failures raised, and no
worker left running when the parent is killed."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from visualsearch.forked import run_forked, shared


def _square_plus_offset(x):
    return x * x + shared()["offset"], os.getpid(), torch.get_num_threads()


def _fails_on_three(x):
    if x == 3:
        raise ValueError("job 3 is bad")
    return x


def test_results_come_back_in_item_order_from_worker_processes():
    seen = []
    out = run_forked(_square_plus_offset, [3, 1, 2, 5], 2, shared={"offset": 10}, threads=1, progress=False,
                     on_result=lambda item, result: seen.append(item))
    assert [v for v, _, _ in out] == [19, 11, 14, 35]
    assert all(pid != os.getpid() for _, pid, _ in out)   # computed in forked workers, not here
    assert len({pid for _, pid, _ in out}) <= 2            # at most `workers` processes
    assert {t for _, _, t in out} == {1}                   # each worker at the thread count asked for
    assert sorted(seen) == [1, 2, 3, 5]                    # on_result saw every job once, in the parent
    assert shared() == {}                                  # the parent's shared state is cleared after


def test_thread_count_is_set_in_each_worker():
    out = run_forked(_square_plus_offset, [1, 2], 2, shared={"offset": 0}, threads=2, progress=False)
    assert {t for _, _, t in out} == {2}


def test_a_failing_job_raises_in_the_parent_and_clears_shared_state():
    with pytest.raises(ValueError, match="job 3 is bad"):
        run_forked(_fails_on_three, [1, 2, 3, 4], 2, shared={"x": 1}, progress=False)
    assert shared() == {}


def test_no_items_starts_no_process():
    assert run_forked(_fails_on_three, [], 2, progress=False) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_a_killed_parent(tmp_path):
    """A kernel killed while its workers train (SIGKILL: no clean-up runs) leaves no worker behind."""
    pids = tmp_path / "pids"
    script = textwrap.dedent(f"""
        import os, time
        from visualsearch.forked import run_forked

        def sleeper(i):
            with open({str(pids)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            time.sleep(60)

        run_forked(sleeper, [1, 2], 2, progress=False)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while time.time() < deadline and (not pids.is_file() or len(pids.read_text().split()) < 2):
        time.sleep(0.2)
    workers = [int(p) for p in pids.read_text().split()]
    assert len(workers) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    alive = workers
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [p for p in workers if _alive(p)]
    assert not alive, f"workers {alive} outlived their killed parent"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended (it awaits its reaper)
    except FileNotFoundError:
        return False
