"""What an episode works on: the instance record in SWE-bench's field names (`records`), the files
and folders instances come from (`sources`), GitHub issues (`github`), and the environment image
each instance runs in (`envs`).
"""

