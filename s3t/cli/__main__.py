"""``python -m s3t.cli``: the ``s3t`` command."""

from s3t.cli import app

app()
