"""Image recipes: the base image bootstrapped from Debian packages without a registry, and the
environment images layered on it (`build`; recipes under `base/` and `envs/`).
"""
