"""``python -m oxbak``: the command line."""

from .cli import main

main()
