"""Comprehensions: their code objects are not traced; the line holding them is one frame."""


def double(x):
    return x * 2


def comprehend(n):
    squares = [i * i for i in range(n)]
    doubled = {i: double(i) for i in range(n)}
    total = sum(v for v in squares)
    return squares, doubled, total
