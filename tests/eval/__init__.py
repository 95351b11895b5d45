"""Tests of fusioncli.eval (a package so its module names cannot clash with tests/results/)."""
