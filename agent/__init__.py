"""The application on top of the stack: the command line, episodes, CWM's protocol, model clients,
instances, batches and grading, serving, the viewer and the world-model tools.

Sub-packages by job, strictly layered (pyproject.toml's import contracts, docs/architecture.md):
cli > batch > grading > episode, exports, viewer, serve, doctor > worldmodel, instances > models >
protocol > logs. Below agent: tools > sandbox > traces, images.
"""
