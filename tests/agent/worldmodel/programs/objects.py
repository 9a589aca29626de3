"""Values that are hard to print: huge, self-referencing, failing or lying repr()."""


class Broken:
    def __repr__(self):
        raise RuntimeError("no repr for you")


class NotAString:
    def __repr__(self):
        return 42


def huge():
    big = list(range(1_000_000))
    text = "ab'c" * 100_000
    data = bytes(range(256)) * 1000
    nested = {"k": big, "s": text}
    return len(big)


def unprintable():
    broken = Broken()
    wrong = NotAString()
    loop = [1, 2]
    loop.append(loop)
    return "done"


def string_set():
    """Iteration order of a set of strings depends on the hash seed (the tracer pins it to 0)."""
    words = {"pear", "apple", "fig", "plum", "kiwi", "lime"}
    joined = ",".join(words)
    return joined
