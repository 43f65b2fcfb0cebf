"""The `oprd` command line (`oprd demo | train | eval | bridge`): argument parsing, the checks that run before any
model loads (`preflight`, `model_files`), and loading local models and tokenizers (`loading`).

The top floor: it may import every other folder of `oprd`; nothing in `oprd` imports it. A user's mistake ends
as one `error: ...` line and exit status 2, never a traceback (`commands.main`).
"""

from oprd.cli.commands import cmd_demo, cmd_eval, cmd_train, main, parser

__all__ = ["cmd_demo", "cmd_eval", "cmd_train", "main", "parser"]
