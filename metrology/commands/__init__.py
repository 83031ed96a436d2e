"""Sub-commands of the ``metrology`` CLI: one module each, exposing ``add_parser(subparsers)``."""
