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
