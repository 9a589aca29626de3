"""Threads: only the main thread is traced."""
import threading


def work(box):
    box.append(sum(range(10)))


def run_thread():
    box = []
    worker = threading.Thread(target=work, args=(box,))
    worker.start()
    worker.join()
    return box
