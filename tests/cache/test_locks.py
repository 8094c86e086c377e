"""fer.cache.locks: one process owns a folder (nested holds in a thread, others refused naming the holder, a
SIGKILLed holder's lock is stale at once), and the short blocking lock keeps two spellings of a path apart."""

import json
import os
import signal
import socket
import threading

from fer.cache.locks import FOLDER_LOCK, FolderLock, Holder, exclusive, own_folder
from fer.tests.lock_holder import holder


def test_a_folder_is_owned_by_one_thread_nested_and_refused_to_others(tmp_path):
    folder = tmp_path / "run"
    outer = own_folder(folder, "fix it")
    assert isinstance(outer, FolderLock) and (folder / FOLDER_LOCK).is_file()
    note = json.loads((folder / FOLDER_LOCK).read_text())
    assert note["pid"] == os.getpid() and note["host"] == socket.gethostname() and note["since"]
    inner = own_folder(tmp_path / "x" / ".." / "run", "")  # another spelling, same folder, same thread: nests
    assert isinstance(inner, FolderLock)
    inner.release()
    seen = []
    t = threading.Thread(target=lambda: seen.append(own_folder(folder, "")))
    t.start()
    t.join()
    assert isinstance(seen[0], Holder) and seen[0].pid == os.getpid()  # still held: the outer hold counts
    outer.release()
    t = threading.Thread(target=lambda: seen.append(own_folder(folder, "")))
    t.start()
    t.join()
    assert isinstance(seen[1], FolderLock)  # free once the outermost hold is released
    seen[1].release()


def test_another_process_is_named_and_its_sigkilled_lock_is_stale(tmp_path):
    folder = tmp_path / "run"
    with holder(folder) as p:
        got = own_folder(folder, "")
        assert isinstance(got, Holder)
        assert got.pid == p.pid and got.host == socket.gethostname()
        assert f"process {p.pid} on host {socket.gethostname()}" in str(got)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    got = own_folder(folder, "")  # the lock file is still there, its lock died with the process
    assert isinstance(got, FolderLock)
    # the note names the new holder
    assert json.loads((folder / FOLDER_LOCK).read_text())["pid"] == os.getpid()
    got.release()


def test_exclusive_keeps_two_spellings_of_one_lock_file_apart(tmp_path):
    lock_file = tmp_path / "locks" / "_create.lock"
    order = []
    inside = threading.Event()

    def second():
        inside.wait()
        with exclusive(tmp_path / "other" / ".." / "locks" / "_create.lock", "another key"):
            order.append("second")

    t = threading.Thread(target=second)
    t.start()
    with exclusive(lock_file, "a key"):
        inside.set()
        t.join(timeout=0.2)  # it must wait for this holder
        order.append("first")
    t.join()
    assert order == ["first", "second"]
