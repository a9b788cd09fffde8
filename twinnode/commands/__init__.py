"""One module per `twinnode` subcommand; each defines `register(subparsers)`."""
