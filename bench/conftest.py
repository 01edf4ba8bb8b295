"""Makes bench/ importable for bench/micro: pytest loads this file before bench/micro/conftest.py.

This directory has no __init__.py, so pytest (rootdir-based "prepend" import mode) puts bench/ on
sys.path to import this conftest; bench/micro then imports its neighbour bench/common.py as
`import common`, the same way `python bench/e2e.py` does (Python puts a script's directory on
sys.path). No sys.path edits by hand, and nothing here is imported by the package.
"""
