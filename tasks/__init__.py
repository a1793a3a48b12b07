"""seqio Task and Mixture registrations; `import tasks` (or `import tasks` in a gin file) registers them all."""

from tasks import finetune, pretrain, seq2seq, superglue  # noqa: F401
