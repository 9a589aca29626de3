"""Many episodes at once: the run request and driver (`run`), the crash-safe run directory (`state`),
where episodes execute (`executors`: local threads or Ray tasks), choosing one prediction among
samples (`voting`), and the live display (`progress`). The driver is the only writer of a run
directory; executors hand back outcomes as data.
"""

