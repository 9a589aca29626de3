"""The command line: one module per command group, wired in `main`; the only package that imports typer.

Every command parses its options, calls one library function and turns the library's errors into one
line (`common.fail`). Nothing below this package imports it.
"""
