"""``python -m s3t.cli``: the ``s3t`` command."""

from s3t.train.parent import follow_parent

follow_parent()  # a retrain started by `s3t serve` dies with the server

from s3t.cli import app  # noqa: E402

app()
