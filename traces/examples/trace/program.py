"""Example program for `agent trace` (see README.md): a loop, a call, a caught exception."""


def parse_scores(text):
    scores = []
    for token in text.split(","):
        try:
            scores.append(int(token))
        except ValueError:
            scores.append(0)
    return scores


def summarize(text):
    scores = parse_scores(text)
    best = max(scores)
    return f"{len(scores)} scores, best {best}"
