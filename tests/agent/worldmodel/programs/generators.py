"""Generators: each resume of a generator frame is a call event, each yield a return event."""


def countdown(n):
    while n > 0:
        yield n
        n -= 1


def total_of_countdown(n):
    total = 0
    for value in countdown(n):
        total += value
    return total


def squares(n):
    for i in range(n):
        yield i * i
