"""Argument parsing shared by the verbs: help that states units, defaults and an example,
defaults from ENGRAM_STORE_* variables, and the options every client verb takes."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, TypeVar

from client import EngramClient, RetryPolicy, Security
from store.config import DEFAULT_PORT

DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"
ActionT = TypeVar("ActionT", bound=argparse.Action)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples kept as written; each flag's default appended to its help
    (where it has one worth stating)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        quiet = action.default is None or action.default is False
        if quiet or action.default == argparse.SUPPRESS or action.required:
            return text
        return f"{text} (default: %(default)s)"


# What a variable may say for a flag that takes no value.
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


class EnvDefaultsParser(argparse.ArgumentParser):
    """Fills each option's default from ENGRAM_STORE_<DEST> when that variable is set. The
    value is checked as the flag's would be, and only when its verb is run: a variable meant
    for `serve` does not stop another verb."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # A prefix of a flag would be taken for it: --grads (no such flag) for --grads-file.
        kwargs.setdefault("allow_abbrev", False)
        self.flags: list[str] = []  # every option string, to suggest the closest
        super().__init__(*args, **kwargs)
        self._from_environment: list[tuple[argparse.Action, str, str]] = []

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if action.option_strings and action.dest not in ("help", "version"):
            variable = f"ENGRAM_STORE_{action.dest.upper()}"
            value = os.environ.get(variable)
            if value is not None:
                self._from_environment.append((action, variable, value))
                action.required = False
        return action

    def _add_action(self, action: ActionT) -> ActionT:
        # Every action passes here, those of groups too.
        self.flags += action.option_strings
        return argparse.ArgumentParser._add_action(self, action)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        for action, variable, value in self._from_environment:
            action.default = self._environment_value(action, variable, value)
        return super().parse_known_args(args, namespace)

    def _environment_value(self, action: argparse.Action, variable: str, value: str) -> Any:
        """`value` as the flag's type, or a usage error naming the variable and its flag."""
        source = f"{variable}={value!r} (read for {max(action.option_strings, key=len)})"
        if isinstance(action, argparse._StoreTrueAction):
            word = value.strip().lower()
            if word not in TRUE_WORDS + FALSE_WORDS:
                self.error(f"{source} must be one of {', '.join(TRUE_WORDS + FALSE_WORDS[:-1])}")
            return word in TRUE_WORDS
        try:
            converted = action.type(value) if callable(action.type) else value
        except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
            self.error(f"{source}: {error}")
        if action.choices is not None and converted not in action.choices:
            self.error(f"{source} must be one of {', '.join(map(str, action.choices))}")
        return converted


def _version() -> str:
    try:
        return metadata.version("engram-store")
    except metadata.PackageNotFoundError:
        return "unknown"


def top_level_parser(description: str, epilog: str) -> argparse.ArgumentParser:
    parser = EnvDefaultsParser(
        prog="engram-store", description=description, epilog=epilog, formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="least severe log messages shown (on stderr)",
    )
    return parser


class Verbs:
    """The verbs of one command line."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser
        self._verbs = parser.add_subparsers(
            dest="verb", required=True, parser_class=EnvDefaultsParser, metavar="VERB"
        )

    def help_texts(self) -> dict[str, str]:
        """The top level's `--help` (under "") and each verb's, as they print them."""
        verbs: dict[str, EnvDefaultsParser] = self._verbs.choices
        return {"": self.parser.format_help()} | {n: v.format_help() for n, v in verbs.items()}

    def parse(self, argv: Sequence[str] | None) -> argparse.Namespace:
        """The arguments of a command line; an unknown flag is refused with its verb's usage
        (not the top level's) and the verb's closest flag."""
        words = list(sys.argv[1:] if argv is None else argv)
        named = [i for i, word in enumerate(words) if word in self._verbs.choices]
        if named:
            # Before argparse's own checks, which would report a required flag missing
            # rather than the misspelt one given for it.
            verb: EnvDefaultsParser = self._verbs.choices[words[named[0]]]
            given = words[named[0] + 1 :]
            given = given[: given.index("--")] if "--" in given else given
            unknown = [w for w in given if w.startswith("--") and w.split("=")[0] not in verb.flags]
            if unknown:
                self._refuse(verb, unknown)
        args, extra = self.parser.parse_known_args(words)
        if extra:
            self._refuse(self._verbs.choices[args.verb], extra)
        return args

    @staticmethod
    def _refuse(verb: EnvDefaultsParser, unknown: list[str]) -> None:
        message = f"unrecognized arguments: {' '.join(unknown)}"
        for word in unknown:
            close = difflib.get_close_matches(word.split("=", 1)[0], verb.flags, n=1)
            if word.startswith("-") and close:
                message += f" (did you mean {close[0]}?)"
                break
        verb.error(message)

    def add(
        self,
        name: str,
        summary: str,
        run: Callable[[argparse.Namespace], int],
        examples: str,
        details: str = "",
    ) -> argparse.ArgumentParser:
        """A verb with a one-line `summary` (shown in the top-level help) and `examples`."""
        verb = self._verbs.add_parser(
            name,
            help=summary,
            description=f"{summary}.\n\n{details}".rstrip(),
            epilog="examples:\n" + "\n".join(f"  {line}" for line in examples.splitlines()),
            formatter_class=HelpFormatter,
        )
        verb.set_defaults(run=run)
        return verb

    def add_client(
        self,
        name: str,
        summary: str,
        run: Callable[[argparse.Namespace], int],
        examples: str,
        details: str = "",
    ) -> argparse.ArgumentParser:
        """A verb that talks to running daemons."""
        verb = self.add(name, summary, run, examples, details)
        verb.add_argument(
            "--address",
            metavar="HOST:PORT[,...]",
            default=DEFAULT_ADDRESS,
            help="HOST:PORT of the daemon; a comma-separated list for daemons sharding tables "
            "(in the order the tables were created with)",
        )
        verb.add_argument(
            "--timeout",
            metavar="SECONDS",
            type=float,
            default=60.0,
            help="seconds the call may take, retries included",
        )
        verb.add_argument(
            "--json",
            action="store_true",
            help="print one JSON document (shapes in docs/reference/cli.md)",
        )
        verb.add_argument(
            "--token", metavar="TOKEN", help="bearer token, for daemons that need one"
        )
        verb.add_argument(
            "--tls-ca", metavar="FILE", help="CA of the daemons' TLS certificates (TLS on)"
        )
        verb.add_argument(
            "--tls-client-cert", metavar="FILE", help="this client's certificate (mutual TLS)"
        )
        verb.add_argument("--tls-client-key", metavar="FILE", help="its key")
        return verb


def connect(args: argparse.Namespace) -> EngramClient:
    """A client of `--address`; a daemon that refuses the connection is reported at once."""
    addresses = [a.strip() for a in args.address.split(",") if a.strip()]
    return EngramClient(
        addresses,
        timeout_s=args.timeout,
        retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2),
        security=Security(args.token, args.tls_ca, args.tls_client_cert, args.tls_client_key),
    )


def int_list(text: str) -> list[int]:
    """`1,2,3` -> [1, 2, 3] (an argparse type)."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
