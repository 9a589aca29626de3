"""Source shapes around the START_OF_TRACE marker (issue 14); each function is traced as the entry.

CWM's demos write the marker into the program; frames never carry it and the context carries it
once, on the traced entry (tests/agent/worldmodel/test_tracer.py, test_source_shapes_*).
"""

import functools

MARKER_IN_A_STRING = "def nowhere():  # << START_OF_TRACE"


def count_letters(s, letter):  # << START_OF_TRACE
    n = 0
    for c in s:
        n += int(c == letter)
    return n


def commented(x):  # add one
    return x + 1


def trailing_blanks(x):   	
    return x * 2


@functools.lru_cache(
    maxsize=None,

    # a comment and a blank line inside the decorator's arguments
)
def cached(x):
    return x - 1


def spread(
    a,
    b=2,
):
    return a + b


def continued(a, \
              b=3):
    return a * b


def with_doc_default(a, doc="""two
lines"""):
    return len(doc) + a


def after_form_feed(x):
    return -x


class Tabbed:
	@staticmethod
	def twice(x):	# << START_OF_TRACE
		return x * 2
