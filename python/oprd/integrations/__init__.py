"""OPRD inside the trainers people already run: `oprd.integrations.trl` (TRL's on-policy distillation trainer, an
optional dependency: `pip install 'oprd[trl]'`)."""
