"""Recursion: every activation is its own scope with its own ".." memory."""


def fact(n):
    if n <= 1:
        return 1
    rest = fact(n - 1)
    return n * rest


def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)
