"""advbp: adversarial back-propagation (Nøkland 2015) from the command line.

Importing this package is cheap: it imports neither torch nor numpy-heavy modules. The torch backend is
imported only when a command asks for it (see `advbp_cli.backends.load_backend`).
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("advbp")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
