"""CWM as a world model of Python execution: a stdlib-only tracer run inside the sandbox (`tracer`),
its frames and CWM's trace prompt format (`frames`), tracing a call, script or test (`run`), tests
traced before and after an episode (`traced_tests`, `solve --trace-tests`), and the neural debugger
that compares CWM's predicted frames with real ones (`debug`). Named for the job, so it is not
confused with `traces/`, the trajectory format.
"""

