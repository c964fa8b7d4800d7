"""`runwatch`: one command line over the library. Exit codes: 0 ok, 1 failure, 2 usage/config."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from runwatch.sinks.store.api import StoreError
from runwatch.sinks.terminal import terminal_safe
from runwatch.stream.cli.registry import build_parser
from runwatch.stream.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    InputError,
    ServiceError,
    UsageError,
)
from runwatch.stream.settings.service import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (ConfigError, UsageError, InputError) as exc:
        print(f"runwatch: {terminal_safe(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except (StoreError, ServiceError) as exc:
        print(f"runwatch: {terminal_safe(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("runwatch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
