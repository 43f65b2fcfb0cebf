"""`python -m oprd.cli ...` (how torchrun starts every rank: `torchrun ... -m oprd.cli train ...`)."""

from oprd.cli.commands import main

raise SystemExit(main())
