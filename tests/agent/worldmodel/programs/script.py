"""A script: module-level code runs, then main() is called."""
import sys


def main(argv):
    words = [w.upper() for w in argv]
    print(" ".join(words))
    return len(words)


if __name__ == "__main__":
    count = main(sys.argv[1:])
