"""Shell completion scripts, made from the parser itself so they never fall behind
it: the subcommands, each one's options, and the choices of options that have them."""

from __future__ import annotations

import argparse
import shlex


def words(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """What completes after each subcommand ("" for the top level), and for each
    option with choices (keyed "<subcommand> <option>") its choices."""
    table: dict[str, list[str]] = {"": _options(parser)}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            table[""] = [*action.choices, *table[""]]
            for name, sub in action.choices.items():
                table[name] = _options(sub)
                for a in sub._actions:
                    if a.choices and a.option_strings:
                        for flag in a.option_strings:
                            table[f"{name} {flag}"] = [str(c) for c in a.choices]
                    elif a.choices and not a.option_strings:
                        table[f"{name} ARG"] = [str(c) for c in a.choices]
    return table


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [f for a in parser._actions for f in a.option_strings if f.startswith("--")]


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """A bash completion function (zsh runs it through bashcompinit) for `pitstop`
    and `kubectl-pitstop`."""
    cases = "\n".join(
        f"    {shlex.quote(key)}) echo {shlex.quote(' '.join(values))} ;;"
        for key, values in words(parser).items()
    )
    body = f"""_pitstop_words() {{
  case "$1" in
{cases}
  esac
}}
_pitstop() {{
  local cur prev sub="" i
  cur="${{COMP_WORDS[COMP_CWORD]}}"
  prev="${{COMP_WORDS[COMP_CWORD-1]}}"
  for ((i = 1; i < COMP_CWORD; i++)); do
    case "${{COMP_WORDS[i]}}" in -*) ;; *) sub="${{COMP_WORDS[i]}}"; break ;; esac
  done
  local choices
  choices="$(_pitstop_words "$sub $prev")"
  if [[ -z "$choices" && -n "$sub" && "$cur" != -* ]]; then
    choices="$(_pitstop_words "$sub ARG")"
  fi
  if [[ -z "$choices" ]]; then
    choices="$(_pitstop_words "$sub")"
  fi
  if [[ "$cur" != -* ]]; then  # options only once a dash is typed
    local w kept=""
    for w in $choices; do [[ "$w" == -* ]] || kept+="$w "; done
    choices="$kept"
  fi
  COMPREPLY=($(compgen -W "$choices" -- "$cur"))
}}
complete -F _pitstop pitstop kubectl-pitstop
"""
    if shell == "zsh":
        return "autoload -U +X bashcompinit && bashcompinit\n" + body
    return body
