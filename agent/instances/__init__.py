"""What an episode works on: the instance record in SWE-bench's field names (`records`), the files
and folders instances come from (`sources`), datasets as their projects distribute them (`datasets`)
and the mapper of each dataset family (`mappers`, `patches`), GitHub issues (`github`), the
environment image each instance runs in (`envs`, `images`), and the check of every instance's
environment before any episode (`preflight`).
"""
