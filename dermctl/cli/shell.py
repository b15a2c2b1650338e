"""The click classes behind the app and its commands: how dermctl reads in a shell, the same for every command.

Typer builds each command from its function; these classes add, in one place:
- help as written: option and command help is shown literally (a `[default: …]` in it is text, not rich
  markup that would vanish), flags show no `<bool>` type, repeatable options show their item type, and
  options a command checks itself (SHOWN_REQUIRED) are marked required;
- value completion for options (see dermctl.cli.choices);
- click's usage errors as one `error:` line like every other error, never a box wrapped at 80 columns, with
  a hint when a global option (`-C`, `--json`, …) was put after the command.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Iterator, Sequence
from typing import Any, get_args

from typer import Abort
from typer._click import Context, Parameter
from typer._click.exceptions import ClickException, NoSuchOption
from typer.core import TyperCommand, TyperGroup

from dermctl.cli.choices import completer_for
from dermctl.cli.common import err_console

# Options their command validates itself, because they have exceptions click cannot express (`pretrain
# --print-config` needs no --data; its --method may come from --config or the resumed run), but that a user
# normally has to give: help marks them required like click's own required options.
SHOWN_REQUIRED = {("pretrain", "--method"), ("pretrain", "--data")}


def _conform(command: str | None, param: Parameter) -> None:
    """Attach the option's value completer (once; an explicit one is kept)."""
    if getattr(param, "_dermctl_conformed", False):
        return
    param._dermctl_conformed = True  # type: ignore[attr-defined]
    if getattr(param, "_custom_shell_complete", None) is None:
        completer = completer_for(command, param.opts)
        if completer is not None:
            param._custom_shell_complete = completer  # type: ignore[attr-defined]


@contextlib.contextmanager
def _help_as_written(command: Any, ctx: Context) -> Iterator[None]:
    """While help is rendered: literal help text, no `<bool>` on flags, `<item>` on repeatable options,
    SHOWN_REQUIRED options marked required. Restored afterwards: parsing and completion see the originals."""
    from rich.markup import escape

    saved: list[tuple[Any, str, Any]] = [(command, "help", command.help)]
    if command.help:
        command.help = escape(command.help)
    for param in command.get_params(ctx):
        saved += [(param, "help", getattr(param, "help", None)), (param, "metavar", param.metavar)]
        saved.append((param, "required", param.required))
        if getattr(param, "help", None):
            param.help = escape(param.help)  # type: ignore[attr-defined]
        if param.metavar is None and getattr(param, "is_flag", False):
            param.metavar = ""  # a flag takes no value: `--force`, never `--force true`
        elif param.metavar is None and getattr(param, "multiple", False):
            items = get_args(param.type_descriptor.annotation)  # type: ignore[attr-defined]
            if items:
                param.metavar = f"<{param._bare_type(items[0]).lower()}>"  # type: ignore[attr-defined]
        if any((command.name, opt) in SHOWN_REQUIRED for opt in param.opts):
            param.required = True
    try:
        yield
    finally:
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)


def _global_option_hint(ctx: Context, name: str, args: Sequence[str]) -> str | None:
    """`global options go before the command: dermctl -C ws knn …` when `name` is an option of the root."""
    root = ctx.find_root()
    if root is ctx:
        return None
    param = next((p for p in root.command.params if name in p.opts or name in p.secondary_opts), None)
    if param is None:
        return None
    takes_value = not getattr(param, "is_flag", False)
    moved, rest = [name], list(args)
    for i, token in enumerate(args):
        if token == name:
            end = i + (2 if takes_value and i + 1 < len(args) else 1)
            moved, rest = list(args[i:end]), [*args[:i], *args[end:]]
            break
        if token.startswith(f"{name}=") or (takes_value and len(name) == 2 and token.startswith(name)):
            moved, rest = [token], [*args[:i], *args[i + 1 :]]
            break
    fixed = shlex.join([root.info_name or "dermctl", *moved, ctx.info_name or "", *rest])
    return f"global options go before the command: {fixed}"


class DermctlCommand(TyperCommand):
    """A sub-command (ingest, pretrain, …)."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        params = super().get_params(ctx)
        for param in params:
            _conform(self.name, param)
        return params

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        given = list(args)  # click's parser consumes the list it is handed
        try:
            return super().parse_args(ctx, args)
        except NoSuchOption as exc:
            hint = _global_option_hint(ctx, exc.option_name, given)
            if hint:
                exc.message = f"{exc.message}; {hint}"
                exc.possibilities = None  # click's "did you mean" among this command's options misleads
            raise

    def format_help(self, ctx: Context, formatter: Any) -> None:
        with _help_as_written(self, ctx):
            super().format_help(ctx, formatter)


class DermctlGroup(TyperGroup):
    """The `dermctl` group: global options, and one-line usage errors for every command."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        params = super().get_params(ctx)
        for param in params:
            _conform(None, param)
        return params

    def format_help(self, ctx: Context, formatter: Any) -> None:
        with _help_as_written(self, ctx):
            super().format_help(ctx, formatter)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            # Not standalone: click errors come here instead of to Typer's boxed (and wrapped) rendering;
            # an Exit comes back as its code, a finished command as its return value (None).
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as exc:
            sys.exit(_report_usage_error(exc))
        except Abort:
            err_console.print("aborted", highlight=False)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _report_usage_error(exc: ClickException) -> int:
    from rich.markup import escape

    if type(exc).__name__ == "NoArgsIsHelpError":  # `dermctl` alone: the help has been printed
        return exc.exit_code
    message = " ".join(exc.format_message().split())  # click's choice lists span lines
    ctx = getattr(exc, "ctx", None)
    if ctx is not None and ctx.command.get_help_option(ctx) is not None:
        message = message.rstrip(".") + f" (see '{ctx.command_path} {ctx.help_option_names[0]}')"
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return exc.exit_code
