"""Straight-line code and a call: the smallest trace worth reading."""


def add(a, b):
    total = a + b
    return total


def main(x):
    y = x * 2
    z = add(y, 1)
    return z
