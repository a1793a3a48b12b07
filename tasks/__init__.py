"""seqio Task and Mixture registrations; `import tasks` (or `import tasks` in a gin file) registers them all."""

from tasks import finetune, pretrain, superglue  # noqa: F401
