"""Independent calls run together (Google's and Coiled's alike)."""

from __future__ import annotations

import queue
import threading


def run_all(fns):
    """Runs independent calls together; answers their results in order, raising the first error.

    The calls run in daemon threads: Ctrl-C stops the wait at once, and the process can exit without
    waiting for a call still in flight (a thread pool would be joined first, however long that call takes).
    """
    fns = list(fns)
    if len(fns) <= 1:
        return [f() for f in fns]
    answers: queue.Queue = queue.Queue()

    def work(i, fn):
        try:
            answers.put((i, True, fn()))
        except BaseException as e:  # handed to the caller's thread
            answers.put((i, False, e))

    for i, fn in enumerate(fns):
        threading.Thread(target=work, args=(i, fn), daemon=True, name=f"coiled-setup-call-{i}").start()
    got = dict((i, (ok, value)) for i, ok, value in (answers.get() for _ in fns))
    for i in range(len(fns)):
        ok, value = got[i]
        if not ok:
            raise value
    return [got[i][1] for i in range(len(fns))]


def start(fn):
    """Starts one call now, in a daemon thread as run_all's calls; answers a function that waits for its result
    (raising its error), for an answer needed later that can be fetched meanwhile."""
    box: queue.Queue = queue.Queue(maxsize=1)

    def work():
        try:
            box.put((True, fn()))
        except BaseException as e:  # handed to whoever asks for the result
            box.put((False, e))

    threading.Thread(target=work, daemon=True, name="coiled-setup-call-early").start()
    got: list = []

    def result():
        if not got:
            got.append(box.get())
        ok, value = got[0]
        if not ok:
            raise value
        return value

    return result
