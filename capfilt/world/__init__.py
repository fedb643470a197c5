"""The toy world: procedural image-text data with known truth, known noise and a web to fetch.

    from capfilt.world import World, WorldMakeSettings, make_world, WorldServer
    make_world(WorldMakeSettings(out="w", size=2000))
    world = World.load("w")
    with WorldServer("w", port=0) as server:
        world.write_urls("urls.parquet", base_url=server.base_url)
"""

from capfilt.world.checker import CheckResult, check, parse
from capfilt.world.make import WorldExistsError, make_world
from capfilt.world.scene import Scene
from capfilt.world.server import WorldServer
from capfilt.world.settings import WorldMakeSettings, WorldServeSettings, WorldUrlsSettings
from capfilt.world.store import NotAWorldError, World

__all__ = [
    "CheckResult", "NotAWorldError", "Scene", "World", "WorldExistsError", "WorldMakeSettings",
    "WorldServeSettings", "WorldServer", "WorldUrlsSettings", "check", "make_world", "parse",
]
