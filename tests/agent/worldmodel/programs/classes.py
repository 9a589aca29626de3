"""Class methods: `self` is shown by repr, with memory addresses normalised."""


class Counter:
    def __init__(self, start):
        self.count = start

    def add(self, amount):
        self.count += amount
        return self.count

    def __repr__(self):
        return f"Counter({self.count})"


class Opaque:
    """No __repr__: the default one holds a memory address."""

    def __init__(self):
        self.tag = "x"


def use_counter(n):
    counter = Counter(0)
    for i in range(n):
        counter.add(i)
    return counter


def make_opaque():
    thing = Opaque()
    return thing


def logged(function):
    def wrapper(*args):
        return function(*args)

    wrapper.__wrapped__ = function
    return wrapper


@logged
def decorated(x):
    return x + 1
