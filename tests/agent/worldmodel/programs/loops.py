"""Loops: `for`, `while`, `break`, `continue`; the locals change at every iteration."""


def count_letters(s, letter):
    n = 0
    for c in s:
        n += int(c == letter)
    return n


def collatz_steps(n):
    steps = 0
    while n != 1:
        if n % 2 == 0:
            n //= 2
            continue
        n = 3 * n + 1
        steps += 1
    return steps


def busy(n):
    """Loop-heavy work for the benchmark: sum of squares of the primes below n."""
    total = 0
    for candidate in range(2, n):
        for divisor in range(2, int(candidate**0.5) + 1):
            if candidate % divisor == 0:
                break
        else:
            total += candidate * candidate
    return total
