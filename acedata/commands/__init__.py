"""CLI commands, one module each, each with `add(subparsers)`."""
