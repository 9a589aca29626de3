"""Exceptions caught in the same scope, caught by a caller, and uncaught."""


def parse(text):
    value = int(text)
    return value


def safe_parse(text):
    try:
        value = parse(text)
    except ValueError as error:
        value = -1
    return value


def uncaught(text):
    value = parse(text)
    return value + 1


def cleanup(text):
    log = []
    try:
        log.append("try")
        return int(text)
    finally:
        log.append("finally")


def reraise(text):
    try:
        return int(text)
    except ValueError:
        raise


def cleanup_on_error(text):
    log = []
    try:
        return int(text)
    finally:
        log.append("finally")


class Countdown:
    """An iterator written in Python: its end is a StopIteration raised into the loop."""

    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return self

    def __next__(self):
        if self.n == 0:
            raise StopIteration
        self.n -= 1
        return self.n


def drain(n):
    seen = []
    for value in Countdown(n):
        seen.append(value)
