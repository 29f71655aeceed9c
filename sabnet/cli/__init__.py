"""Thin command-line layer: each module parses flags, calls one function and prints what happened."""
