"""`capfilt world make | serve | urls`: thin commands over capfilt.world."""

from __future__ import annotations

import json

import typer

from capfilt.settings_cli import settings_command
from capfilt.world import World, WorldExistsError, WorldServer, make_world
from capfilt.world.settings import WorldMakeSettings, WorldServeSettings, WorldUrlsSettings

world_app = typer.Typer(help="The toy world: make it, serve it, point its URLs elsewhere.", no_args_is_help=True)


@settings_command(world_app, "make", WorldMakeSettings, positional=["out"])
def make(settings: WorldMakeSettings) -> None:
    """Make a toy world (scenes, images, captions, noisy web split, tasks) in OUT."""
    try:
        manifest = make_world(settings)
    except WorldExistsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps({k: manifest[k] for k in ("images", "rows", "web_noise", "web_fetch")}, sort_keys=True))


@settings_command(world_app, "serve", WorldServeSettings, positional=["out"])
def serve(settings: WorldServeSettings) -> None:
    """Serve the world in OUT over HTTP until interrupted, breaking the URLs its labels say."""
    world = World.load(settings.out)
    server = WorldServer(settings.out, host=settings.host, port=settings.port,
                         slow_seconds=settings.slow_seconds, verbose=True)
    if server.base_url != world.settings.base_url.rstrip("/"):
        typer.echo(f"note: the web split's URLs point at {world.settings.base_url}; write a url list for this "
                   f"server with `capfilt world urls {settings.out} --base-url {server.base_url} --output FILE`",
                   err=True)
    typer.echo(server.summary(), nl=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


@settings_command(world_app, "urls", WorldUrlsSettings, positional=["out"])
def urls(settings: WorldUrlsSettings) -> None:
    """Write the web split's url list (.parquet/.csv: key, url, caption; .txt: urls) for BASE_URL."""
    path = World.load(settings.out).write_urls(settings.output, base_url=settings.base_url)
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    app.add_typer(world_app, name="world")
