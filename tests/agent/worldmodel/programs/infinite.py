"""Programs that never end: the tracer must stop them cleanly at its bounds."""
import time


def spin():
    n = 0
    while True:
        n += 1


def sleeper():
    time.sleep(3600)
    return "never"
