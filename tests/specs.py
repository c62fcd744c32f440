"""Spec texts shared by test modules (pytest puts this folder on sys.path)."""

MINIMAL_SPEC = """
name: ok
datasets: [digits]
grid:
  widths: [8]
  depths: [1]
  learning_rates: [0.1]
budget:
  max_epochs: 2
"""
