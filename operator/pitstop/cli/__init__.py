"""The `pitstop` command (also the kubectl plugin `kubectl-pitstop`).

  main      argument parsing and dispatch; `pitstop run` starts pitstop.runner
  commands  repair, status, plan, done, abort: the subcommands that talk to the
            cluster (official synchronous client)
  completion  the bash/zsh completion script, made from the parser
  errors    CLIError and `explain` (the client's errors in one line), shared by both,
            so that main and commands do not import each other

main imports commands lazily (per subcommand), commands never imports main.
"""
