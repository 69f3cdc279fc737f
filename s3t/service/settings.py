"""The settings of ``s3t serve``, defined once.

Each field carries its flag, help and bounds in its ``metadata``: the command line builds
its options from them (``s3t/cli/serve.py``), ``create_app(settings)`` takes them, and
``Settings.check`` is the only place they are validated. An invalid value raises
``SettingsError`` naming the flag and the fix. Imports no web stack: every ``s3t`` command
reads this module to build ``s3t serve``'s options.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3t.service.callback_hosts import ALLOW_ENV, parse_entry, split_entries
from s3t.service.callback_hosts import FLAG as ALLOW_FLAG
from s3t.service.retrainer import RetrainPolicy

TOKEN_ENV = "S3T_API_TOKEN"
CALLBACK_SECRET_ENV = "S3T_CALLBACK_SECRET"
RETRAIN_HELP = ("Background retraining: manual (only POST /v1/retrain), eager (as soon as a "
                "deletion invalidated a stage) or capacity:<threshold> (when capacity falls "
                "below it, e.g. capacity:0.8); a policy retrain starts once no deletion arrived "
                "for --retrain-delay seconds. Stages serve as soon as each is retrained.")
REQUIRED = object()
LOG_FORMATS = ("text", "json")                  # as s3t/service/logs.py writes them
LOG_LEVELS = ("debug", "info", "warning", "error")
ORIGIN = re.compile(r"^https?://[^/\s?#]+$")


class SettingsError(ValueError):
    """An invalid serve setting: ``field`` names it, ``flag`` its ``s3t serve`` option."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.flag = field, flag_of(field)
        super().__init__(f"{self.flag}: {message}")



def _setting(default: Any, help: str, *, low: float | None = None, high: float | None = None,
             flag: str | None = None, cli: bool = True, **extra: Any) -> Any:
    """A field: its default, help, bounds (``low``/``high``, inclusive; numbers must be
    finite) and flag (default: ``--`` and the name with dashes)."""
    metadata = {"help": help, "low": low, "high": high, "flag": flag, "cli": cli, **extra}
    if default is REQUIRED:
        return dataclasses.field(metadata=metadata)
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default_factory=lambda: type(default)(default),
                                 metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    """What one ``s3t serve`` instance is told (each field's help is its option's help)."""

    run_dir: Path = _setting(REQUIRED, "Run directory (created by `s3t train`).",
                             flag="RUN", cli=False)
    host: str = _setting("127.0.0.1", "Address to listen on. Without a token only a loopback "
                         "address is allowed.")
    port: int = _setting(8000, "TCP port.", low=1, high=65535)
    token: str | None = _setting(None, "The bearer token (read from --token-file or the "
                                 f"{TOKEN_ENV} environment variable). Every route but health, "
                                 "readiness and the page needs it (see --open-predict, "
                                 "--open-status); without one, every route is open.",
                                 flag="--token-file", cli=False)
    open_predict: bool = _setting(False, "Serve predict and generate without the token.")
    open_status: bool = _setting(False, "Serve status, history, jobs and metrics without the "
                                 "token (for a trusted network; they never show a file path).")
    cors_origins: tuple[str, ...] = _setting((), "A browser origin (scheme://host[:port]) "
                                             "allowed to call the API (repeatable; * for any).",
                                             flag="--cors-origin", metavar="ORIGIN")
    max_batch: int = _setting(32, "Inputs per batched model call.", low=1)
    max_wait_ms: float = _setting(5.0, "How long a batch waits for more requests, in "
                                  "milliseconds.", low=0, high=60_000)
    workers: int = _setting(1, "Model calls (batches) that run at once (0: one per CPU core). "
                            "One by default: on a small machine concurrent calls slow deletions "
                            "down (BENCHMARKS.md section 11).", low=0)
    torch_threads: int = _setting(0, "Torch threads per model call (0: torch's default, one per "
                                  "CPU core). With several --workers, 1 keeps a busy machine's "
                                  "cores from waiting on each other.", low=0)
    max_inputs: int = _setting(256, "Inputs per predict request (more: 413).", low=1)
    max_body_bytes: int = _setting(1_000_000, "Bytes per request body (more: 413). 10,000 "
                                   "sample ids of 40 characters take about 450,000.", low=1)
    max_ids: int = _setting(10_000, "Sample ids and groups per deletion or erasure request "
                            "(more: 413).", low=1)
    callback_secret: str | None = _setting(
        None, "The shared secret that signs erasure status callbacks (HMAC-SHA256) on a run "
        f"without a signing key (read from --callback-secret-file or {CALLBACK_SECRET_ENV}); a "
        "signed run's callbacks carry its Ed25519 signature instead. Without either, erasure "
        "requests with status_callback_urls are refused.", flag="--callback-secret-file",
        cli=False)
    callback_allow: tuple[str, ...] = _setting(
        (), "A host that erasure status callbacks may be POSTed to: HOST, HOST:PORT, "
        "[IPv6]:PORT or *.DOMAIN (repeatable, or a comma list). A status_callback_url on any "
        "other host is refused (400), loopback and private addresses included unless listed, "
        "so a caller cannot make the server request an internal address (SSRF).",
        flag=ALLOW_FLAG, metavar="HOST[:PORT]", envvar=ALLOW_ENV)
    callback_attempts: int = _setting(10, "Tries of each erasure status callback before it "
                                      "is given up (GET /v1/dsr/{id} counts those).", low=1,
                                      high=100)
    callback_backoff_s: float = _setting(2.0, "Seconds before the second try of a callback; "
                                         "doubled after each failure, at most 300.", low=0.01,
                                         high=3600, flag="--callback-backoff")
    max_queue: int = _setting(1024, "Predict requests waiting for a model call (more: 503).",
                              low=1)
    retrain: str = _setting("manual", RETRAIN_HELP)
    retrain_delay_s: float = _setting(0.0, "Seconds without a new deletion before a policy "
                                      "retrain starts, so a burst of deletions is retrained "
                                      "once.", low=0, high=7 * 86_400, flag="--retrain-delay")
    eval_size: int = _setting(256, "Validation samples measured for the history's accuracy "
                              "(0: none).", low=0)
    log_format: str = _setting("text", "Server log lines: text, or json (one object per line); "
                               "each carries its request's X-Request-ID.")
    log_level: str = _setting("info", "debug, info, warning or error.")
    eval_interval_s: float = _setting(5.0, "Seconds between two accuracy measurements, at "
                                      "most one after each change.", low=0, high=86_400,
                                      flag="--eval-interval")

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        if isinstance(self.cors_origins, (list, str)):
            origins = [self.cors_origins] if isinstance(self.cors_origins, str) else \
                self.cors_origins
            object.__setattr__(self, "cors_origins", tuple(origins))
        object.__setattr__(self, "callback_allow", split_entries(self.callback_allow))

    def check(self) -> Settings:
        """The one validation of the serve settings; raise ``SettingsError``, return self."""
        for f in dataclasses.fields(self):
            low, high = f.metadata["low"], f.metadata["high"]
            if low is not None or high is not None:
                _check_number(f.name, getattr(self, f.name), low, high, f.type == "int")
        if self.token is not None and (not self.token.strip() or
                                       any(c.isspace() for c in self.token)):
            raise SettingsError("token", "the token must be one word (no spaces), not empty: "
                                "put it alone in the file")
        if self.callback_secret is not None and len(self.callback_secret.strip()) < 16:
            raise SettingsError("callback_secret", "the callback secret must hold at least 16 "
                                "characters: put a long random string alone in the file")
        for entry in self.callback_allow:
            try:
                parse_entry(entry)
            except ValueError as exc:
                raise SettingsError("callback_allow", str(exc)) from None
        try:
            RetrainPolicy.parse(self.retrain)
        except ValueError as exc:
            raise SettingsError("retrain", str(exc)) from None
        if self.log_format not in LOG_FORMATS:
            raise SettingsError("log_format", f"must be text or json, got {self.log_format!r}")
        if str(self.log_level).lower() not in LOG_LEVELS:
            raise SettingsError("log_level", f"must be one of {', '.join(LOG_LEVELS)}, got "
                                f"{self.log_level!r}")
        for origin in self.cors_origins:
            if origin != "*" and not ORIGIN.match(origin):
                raise SettingsError("cors_origins", f"{origin!r} is not an origin: give "
                                    "scheme://host[:port] with no path (e.g. "
                                    "https://ops.example.com) or *")
        if self.token is None and not is_loopback(self.host):
            raise SettingsError("host", f"refusing to serve on {self.host} without a token: "
                                f"give --token-file or set {TOKEN_ENV} (without one, only a "
                                "loopback host such as 127.0.0.1)")
        return self

    @property
    def model_workers(self) -> int:
        """Model calls at once (``workers``, 0 resolved to the CPU cores)."""
        return self.workers or cpu_cores()

    @property
    def policy(self) -> RetrainPolicy:
        return RetrainPolicy.parse(self.retrain)


def _check_number(name: str, value: Any, low: float | None, high: float | None,
                  integer: bool) -> None:
    kind = "an integer" if integer else "a finite number"
    if low is not None and high is not None:
        bounds = f" in [{low:g}, {high:g}]"
    else:
        bounds = f" >= {low:g}" if low is not None else f" <= {high:g}"
    ok = (isinstance(value, int) if integer else isinstance(value, numbers.Real)) and \
        not isinstance(value, bool) and math.isfinite(value) and \
        (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        raise SettingsError(name, f"must be {kind}{bounds}, got {value!r}")


def flag_of(name: str) -> str:
    """The ``s3t serve`` option of a settings field."""
    for f in dataclasses.fields(Settings):
        if f.name == name:
            return f.metadata["flag"] or "--" + name.replace("_", "-")
    raise KeyError(f"Settings has no field {name!r}")


def setting_help(name: str) -> str:
    for f in dataclasses.fields(Settings):
        if f.name == name:
            return f.metadata["help"]
    raise KeyError(f"Settings has no field {name!r}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # another host name: it may resolve to anything
        return False


def cpu_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
