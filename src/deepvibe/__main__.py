"""`python -m deepvibe ...` (and `torchrun -m deepvibe ...`) runs the command-line app."""

from deepvibe.cli import app

app()
