"""Grading patches: a fresh sandbox per prediction, the patch and the test patch applied, the
instance's tests run and read; resolved when every FAIL_TO_PASS and PASS_TO_PASS test passes
(docs/cwm-protocol.md, section 6). Used by `agent eval` and by `agent batch --evaluate` on workers.
"""

