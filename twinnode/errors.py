"""The project's exception tree, and the exit codes the CLI maps them to.

Every failure a user, an operator or a peer can cause is one of these; they are raised
deep inside and caught at the edges (CLI, control socket, receive loop), where they become
a clear message, a counter or an exit code. Anything else is a bug.

    TwinnodeError
    ├── ConfigError            a config file or setting is wrong (names the key)
    ├── SchemaError            a schema file is wrong (unknown type, bad bounds, ...)
    ├── DataError              a CSV/Parquet file does not fit its schema (names row and column)
    ├── PrivacyError
    │   ├── BudgetExceeded     a run would take the ledger past its cap
    │   └── AccountingError    no noise level reaches the requested (epsilon, delta)
    ├── GeneratorError         training failed, or a posterior file does not fit
    ├── KeyFileError           a key file is missing, malformed, too open, or would be overwritten
    │   └── CardError          a peer card is malformed, forged, or not another key's rotation
    ├── WireError              a peer's message is refused (one subclass per reason)
    │   ├── MalformedMessage   frame count/size, msgpack, field types
    │   │   └── TwinTooLarge   a signed twin with more rows (or bytes) than we accept
    │   ├── UnsupportedVersion
    │   ├── UnknownSender      sender not pinned in the trust store
    │   ├── InvalidSignature
    │   ├── ReplayedMessage    this (sender, seq), or this message's nonce, was already seen
    │   ├── EquivocatedMessage a second, different twin under an accepted (sender, seq)
    │   ├── DuplicateMessage   content digest already accepted from that sender
    │   ├── StaleMessage       a heartbeat/catch-up message outside the freshness window
    │   ├── MisaddressedMessage a catch-up message addressed to another node
    │   ├── DigestMismatch     payload does not match the signed digest
    │   └── SchemaMismatch     schema hash or columns do not fit the local schema
    ├── StoreError             the on-disk store is unreadable or inconsistent
    ├── TransportError         sockets could not be set up
    ├── ControlError           a control-socket request failed
    │   ├── NodeNotRunning     nothing listens on the control socket
    │   └── ReplyTimeout       the node did not answer in time (its job may still be running)
    └── AnalysisError          the analysis cannot be run on these inputs
"""
from __future__ import annotations


class TwinnodeError(Exception):
    """Base of every error this project raises on purpose."""

    exit_code = 1
    reason = "error"


class ConfigError(TwinnodeError):
    """A configuration file or command-line setting is invalid."""

    exit_code = 3
    reason = "config"


class SchemaError(TwinnodeError):
    """A schema file is invalid."""

    exit_code = 4
    reason = "schema"


class DataError(TwinnodeError):
    """A data file does not satisfy its schema."""

    exit_code = 5
    reason = "data"


class PrivacyError(TwinnodeError):
    """A privacy setting or accounting step failed."""

    exit_code = 6
    reason = "privacy"


class BudgetExceeded(PrivacyError):
    """The requested run would exceed the privacy ledger's cap."""

    exit_code = 7
    reason = "budget"


class AccountingError(PrivacyError):
    """The accountant could not find a noise level for the requested privacy."""

    reason = "accounting"


class GeneratorError(TwinnodeError):
    """Training or sampling failed, or a saved posterior does not fit."""

    exit_code = 8
    reason = "generator"


class KeyFileError(TwinnodeError):
    """A key file is missing, malformed, too open, or would be overwritten."""

    exit_code = 9
    reason = "keys"


class CardError(KeyFileError):
    """A peer card is malformed, its signature does not verify, or it would replace a pinned
    peer's keys without that peer's signature."""

    reason = "card"


class WireError(TwinnodeError):
    """A message from the network was refused; `reason` is its log/counter name."""

    exit_code = 10
    reason = "wire"


class MalformedMessage(WireError):
    reason = "malformed"


class TwinTooLarge(MalformedMessage):
    """A twin its sender signed, with more rows (or a bigger payload) than this node accepts:
    refused for good, so it is not fetched again (`ReplayGuard.decline`)."""

    reason = "too-large"


class UnsupportedVersion(WireError):
    reason = "version"


class UnknownSender(WireError):
    reason = "unknown-sender"


class InvalidSignature(WireError):
    reason = "signature"


class ReplayedMessage(WireError):
    reason = "replay"


class DuplicateMessage(WireError):
    reason = "duplicate"


class EquivocatedMessage(WireError):
    """The sender signed two different twins under one seq: worth an operator's look."""

    reason = "equivocation"


class StaleMessage(WireError):
    reason = "stale"


class MisaddressedMessage(WireError):
    reason = "misaddressed"


class DigestMismatch(WireError):
    reason = "digest"


class SchemaMismatch(WireError):
    reason = "schema"


class StoreError(TwinnodeError):
    """The durable store is unreadable or inconsistent."""

    exit_code = 11
    reason = "store"


class TransportError(TwinnodeError):
    """Sockets could not be set up."""

    exit_code = 12
    reason = "transport"


class ControlError(TwinnodeError):
    """A control-socket request failed."""

    exit_code = 13
    reason = "control"


class NodeNotRunning(ControlError):
    """Nothing is listening on the control socket."""

    exit_code = 14
    reason = "not-running"


class ReplyTimeout(ControlError):
    """The node did not answer within the client's timeout; a job it runs goes on."""

    reason = "timeout"


class AnalysisError(TwinnodeError):
    """The analysis cannot run on these inputs."""

    exit_code = 15
    reason = "analysis"


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected error (a bug: please report it with the log)",
    2: "command-line usage error",
    3: "invalid configuration",
    4: "invalid schema file",
    5: "data file does not match the schema",
    6: "privacy accounting failed",
    7: "privacy budget cap would be exceeded",
    8: "generator training or sampling failed",
    9: "key file problem",
    10: "message refused",
    11: "store problem",
    12: "network transport problem",
    13: "control command failed",
    14: "node is not running",
    15: "analysis failed",
}
