"""Graph -> Graph passes. Each states in its docstring the rewrite it makes and the
invariant it keeps; compiler/pipeline.py lists them in order."""
