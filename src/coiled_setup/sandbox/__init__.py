"""A local Google Cloud and Coiled that the real client libraries talk to unchanged.

Product code never imports this package, except to start it (`coiled-setup sandbox`,
`coiled-setup gcp --sandbox`).
"""

from coiled_setup.sandbox.server import Sandbox
from coiled_setup.sandbox.world import Config

__all__ = ["Sandbox", "Config"]
