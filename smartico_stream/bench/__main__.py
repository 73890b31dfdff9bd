"""``python -m smartico_stream.bench``: the bench command on its own, with the same options."""

import typer

from smartico_stream.bench.command import bench_command

if __name__ == "__main__":
    typer.run(bench_command)
