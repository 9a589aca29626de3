"""Isolation: the one `Sandbox` interface (`base`), the shared bash-session protocol (`session`), the
Docker and bubblewrap backends (`docker`, `bwrap`, `rootfs`), warm pools, the registry that removes
containers at exit (`lifecycle`) and the reaper of orphans (`reaper`).
"""
