"""Grading patches with the official SWE-bench harness's code (docs/grading.md): a grading spec per
instance (SWE-bench 5 row, 4.x row or an environment of ours), a fresh sandbox per prediction run as
swebench's `run_instance` runs it, swebench's report logic for the verdict, forgery rules on top, pass@k
over K samples, and the official report files. Used by `agent eval` and by `agent batch --evaluate`.
"""
