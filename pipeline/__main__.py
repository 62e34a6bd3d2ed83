"""`python -m pipeline ...`, which is also what `torchrun -m pipeline ...` runs."""

from pipeline.cli import app

if __name__ == "__main__":
    app()
